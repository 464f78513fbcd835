"""Ours: one signal per kind of body, each with one deferred receiver that waits 50 ms."""

from __future__ import annotations

import asyncio
import time

import django.dispatch

import outbox

from . import probe

wait_sync = django.dispatch.Signal()
wait_async = django.dispatch.Signal()


@outbox.receiver(wait_sync)
def sleep_sync(sender, n, **kwargs):
    time.sleep(probe.WAIT)
    probe.done(n)


@outbox.receiver(wait_async)
async def sleep_async(sender, n, **kwargs):
    await asyncio.sleep(probe.WAIT)
    probe.done(n)
