"""Slow receivers, sync and async, for tests/test_concurrency.py.

Connected only on request, so that no other test sends to them: worker processes connect
them when ``OUTBOX_TEST_SLOW_RECEIVERS=1`` (tests.testapp.apps), the test process by calling
:func:`connect`. Each records its calls durably (``Call`` rows), so that a test can tell
whether an event ran twice, and in which worker.
"""

import asyncio
import os
import time

import django.dispatch

import outbox

from .models import Call

#: Sent with ``key`` and ``sleep``: ``wait_async`` sleeps that long, then records the call.
waited = django.dispatch.Signal()
#: Sent with ``key`` and ``sleep``: its receiver outlives its timeout of 0.5 s.
stuck_sync_signal = django.dispatch.Signal()
stuck_async_signal = django.dispatch.Signal()
#: Sent with ``key`` and ``exit``: its async receivers raise SystemExit or KeyboardInterrupt
#: (``exit`` names which), one with a timeout and one without.
exiting_signal = django.dispatch.Signal()

TIMEOUT = 0.5


def _record(receiver, key):
    Call.objects.create(receiver=receiver, key=key, worker_pid=os.getpid())


async def wait_async(sender, key, sleep=0.0, mark_start=False, **kwargs):
    if mark_start:  # as receivers.record: says it runs, where ``running`` says only "claimed"
        await Call.objects.acreate(receiver="started", key=key, worker_pid=os.getpid())
    await asyncio.sleep(sleep)
    # Django's async ORM, from a task on the worker's event loop.
    await Call.objects.acreate(receiver="wait_async", key=key, worker_pid=os.getpid())


def stuck_sync(sender, key, sleep, **kwargs):
    _record("stuck_sync:start", key)
    time.sleep(sleep)
    _record("stuck_sync:end", key)


async def stuck_async(sender, key, sleep, **kwargs):
    await Call.objects.acreate(receiver="stuck_async:start", key=key, worker_pid=os.getpid())
    await asyncio.sleep(sleep)
    await Call.objects.acreate(receiver="stuck_async:end", key=key, worker_pid=os.getpid())


async def exits_async(sender, key, exit, **kwargs):
    await Call.objects.acreate(receiver="exits_async", key=key, worker_pid=os.getpid())
    raise {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}[exit]()


async def exits_async_timed(sender, key, exit, **kwargs):
    await exits_async(sender, key, exit)


def connect():
    """Connect the slow receivers (idempotent)."""
    outbox.connect(waited, wait_async)
    outbox.connect(stuck_sync_signal, stuck_sync, timeout=TIMEOUT, max_attempts=2)
    outbox.connect(stuck_async_signal, stuck_async, timeout=TIMEOUT, max_attempts=2)
    outbox.connect(exiting_signal, exits_async, max_attempts=1)
    outbox.connect(exiting_signal, exits_async_timed, timeout=30, max_attempts=1)
