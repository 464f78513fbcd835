"""Async receivers the tests connect, with the signals they listen to.

Those the worker runs record their calls durably (Call rows, through Django's async ORM),
for tests that run real worker processes; on_commit ones record in CALLS, in process.
"""

import asyncio
import os

import django.dispatch

import outbox

from .models import Call
from .receivers import CALLS

awaited = django.dispatch.Signal()  # arecord
retried = django.dispatch.Signal()  # acharge
stalled = django.dispatch.Signal()  # astall, timeout=0.5
unawaited = django.dispatch.Signal()  # returns_coroutine, a sync function
noticed = django.dispatch.Signal()  # anotice, delivery="on_commit"


@outbox.receiver(awaited)
async def arecord(sender, key, hold=False, **kwargs):
    """Marks its start; with ``hold``, waits (at most 60 s) until the test writes a
    Call(receiver="go") row for ``key``; then reads its mark back and writes its end."""
    await Call.objects.acreate(receiver="arecord-start", key=key, worker_pid=os.getpid())
    for _ in range(600 if hold else 0):
        if await Call.objects.filter(receiver="go", key=key).aexists():
            break
        await asyncio.sleep(0.1)
    start = await Call.objects.aget(receiver="arecord-start", key=key)
    await Call.objects.acreate(receiver="arecord", key=key, worker_pid=start.worker_pid)


@outbox.receiver(retried, max_attempts=3)
async def acharge(sender, key, **kwargs):
    """Fails its first attempt for each key (marked by a Call row), succeeds the next."""
    await asyncio.sleep(0)
    if not await Call.objects.filter(receiver="acharge-failed", key=key).aexists():
        await Call.objects.acreate(receiver="acharge-failed", key=key, worker_pid=os.getpid())
        raise RuntimeError(f"the payment gateway rejected {key}")
    await Call.objects.acreate(receiver="acharge", key=key, worker_pid=os.getpid())


@outbox.receiver(stalled, timeout=0.5, max_attempts=1)
async def astall(sender, key, **kwargs):
    """Waits far longer than its timeout; records whether it was cancelled or finished."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await Call.objects.acreate(receiver="astall-cancelled", key=key, worker_pid=os.getpid())
        raise
    await Call.objects.acreate(receiver="astall", key=key, worker_pid=os.getpid())


async def _record_unawaited(key):
    await Call.objects.acreate(receiver="returns_coroutine", key=key, worker_pid=os.getpid())


@outbox.receiver(unawaited, max_attempts=1)
def returns_coroutine(sender, key, **kwargs):
    """A sync function handing back a coroutine that nothing would await."""
    return _record_unawaited(key)


@outbox.receiver(noticed, delivery="on_commit")
async def anotice(sender, **kwargs):
    await asyncio.sleep(0)
    await Call.objects.acount()  # the async ORM works after commit too
    CALLS.append(("anotice", sender, kwargs))
