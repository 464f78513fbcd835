"""procrastinate's tasks (its Django contrib autodiscovers ``tasks`` modules)."""

from __future__ import annotations

import asyncio
import time

from procrastinate.contrib.django import app

from . import probe


@app.task(name="bench_io.sleep_async")
async def sleep_async(n):
    await asyncio.sleep(probe.WAIT)
    probe.done(n)


@app.task(name="bench_io.sleep_sync")
def sleep_sync(n):
    time.sleep(probe.WAIT)
    probe.done(n)
