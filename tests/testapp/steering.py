"""Receivers that steer their own delivery (RetryAfter, PermanentFailure) or read
outbox.current_event(), with the signals they listen to.

Those the worker runs write what they saw as JSON lines to the file named by their ``path``
argument: durable across processes, and roomy enough for a whole EventInfo.
"""

import asyncio
import json
import os
import time

import django.dispatch
from django.db import transaction

import outbox

from .receivers import CALLS

later = django.dispatch.Signal()  # retry_later, aretry_later
doomed = django.dispatch.Signal()  # give_up
looked = django.dispatch.Signal()  # look, alook
steered_now = django.dispatch.Signal()  # on_commit: retry_now, give_up_now, look_now
keyed_later = django.dispatch.Signal()  # keyed_retry, ordering_key=account


def _note(path, **fields):
    event = outbox.current_event()
    seen = None
    if event is not None:
        seen = {
            "id": event.id,
            "attempt": event.attempt,
            "max_attempts": event.max_attempts,
            "signal": event.signal,
            "receiver": event.receiver,
            "queue": event.queue,
            "ordering_key": event.ordering_key,
            "created_at": event.created_at.isoformat() if event.created_at else None,
            "idempotency_key": event.idempotency_key,
        }
    with open(path, "a") as out:
        out.write(json.dumps({"event": seen, "pid": os.getpid(), "t": time.time(), **fields}) + "\n")
    return event


def seen(path):
    """The JSON lines a receiver wrote to ``path``."""
    if not os.path.exists(path):
        return []
    with open(path) as lines:
        return [json.loads(line) for line in lines]


@outbox.receiver(later, max_attempts=3, queue="steering")
def retry_later(sender, key, path, seconds, until_attempt=1, **kwargs):
    """Asks for a retry after ``seconds`` on attempts up to ``until_attempt``."""
    event = _note(path, key=key)
    if event.attempt <= until_attempt:
        raise outbox.RetryAfter(seconds, f"the API said 429 for {key}")


@outbox.receiver(later, max_attempts=3, queue="steering")
async def aretry_later(sender, key, path, seconds, until_attempt=1, **kwargs):
    await asyncio.sleep(0)
    event = _note(path, key=key, kind="async")
    if event.attempt <= until_attempt:
        raise outbox.RetryAfter(seconds)


@outbox.receiver(doomed, max_attempts=5)
def give_up(sender, key, path, **kwargs):
    _note(path, key=key)
    raise outbox.PermanentFailure(f"card {key} was declined for good")


@outbox.receiver(looked, max_attempts=4)
def look(sender, key, path, hold=0.0, fail_first=False, **kwargs):
    """Notes current_event() before and after ``hold`` seconds (other receivers run
    meanwhile at --concurrency N); fails its first attempt with ``fail_first``."""
    event = _note(path, key=key, at="start")
    time.sleep(hold)
    _note(path, key=key, at="end")
    if fail_first and event.attempt == 1:
        raise RuntimeError(f"first attempt of {key} fails")


@outbox.receiver(looked, max_attempts=4)
async def alook(sender, key, path, hold=0.0, fail_first=False, **kwargs):
    event = _note(path, key=key, at="start", kind="async")
    await asyncio.sleep(hold)
    _note(path, key=key, at="end", kind="async")
    if fail_first and event.attempt == 1:
        raise RuntimeError(f"first attempt of {key} fails")


@outbox.receiver(steered_now, delivery="on_commit")
def retry_now(sender, **kwargs):
    CALLS.append(("retry_now", outbox.current_event()))
    raise outbox.RetryAfter(60)


@outbox.receiver(steered_now, delivery="on_commit")
async def give_up_now(sender, **kwargs):
    CALLS.append(("give_up_now", outbox.current_event()))
    raise outbox.PermanentFailure("no row to fail")


def by_account(sender, account, **kwargs):
    return account


@outbox.receiver(keyed_later, ordering_key=by_account, max_attempts=3)
def keyed_retry(sender, account, step, path, seconds=0.0, **kwargs):
    """Step 1 of each account asks for a retry after ``seconds`` on its first attempt."""
    event = _note(path, key=f"{account}:{step}")
    if step == 1 and event.attempt == 1:
        raise outbox.RetryAfter(seconds)


doomed_keyed = django.dispatch.Signal()  # keyed_give_up, ordering_key=key


@outbox.receiver(doomed_keyed, ordering_key=lambda sender, key, **kwargs: key, max_attempts=5)
def keyed_give_up(sender, key, **kwargs):
    raise outbox.PermanentFailure(f"{key} is broken")


relayed = django.dispatch.Signal()  # relay_steered


@outbox.receiver(relayed)
def relay_steered(sender, **kwargs):
    """A deferred receiver whose transaction runs the on_commit receivers of steered_now."""
    CALLS.append(("relay_steered", outbox.current_event()))
    with transaction.atomic():
        steered_now.send(sender=None)
