"""django-q2's task: a dotted path for ``async_task``."""

from __future__ import annotations

import time

from . import probe


def sleep_sync(n):
    time.sleep(probe.WAIT)
    probe.done(n)
