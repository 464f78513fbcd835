"""Receivers connected with ``atomic=True`` (and a plain twin), for tests/test_atomic.py.

Each records its call as a ``Call`` row: inside its transaction for the atomic ones, so a
row exists exactly when the attempt's transaction committed; at once for the plain one.
"""

from __future__ import annotations

import os
import threading
import time

import django.dispatch
from django.db import IntegrityError, connection, transaction

import outbox
from outbox.queries import TABLE

from .models import Call

#: Sent with key= and the misbehaviour to show (see atomic_record).
atomic_work = django.dispatch.Signal()
#: The same receiver body without atomic=True: the control of the chaos tests.
plain_work = django.dispatch.Signal()
#: An atomic receiver with a timeout.
atomic_slow = django.dispatch.Signal()


def _misbehave(
    name,
    key,
    *,
    fail=False,
    die_first=False,
    pause=0.0,
    steal=False,
    leave_open=False,
    swallow=False,
    signal=None,
):
    if steal:
        _steal_lease(outbox.current_event().id)
    Call.objects.create(receiver=name, key=key, worker_pid=os.getpid())
    if pause:
        time.sleep(pause)
    if die_first and outbox.current_event().attempt == 1:
        os._exit(3)  # as an OOM kill would: no exception, no clean-up, no COMMIT
    if fail:
        raise ValueError(f"{name} failed on purpose for {key}")
    if leave_open:
        transaction.atomic().__enter__()
        Call.objects.create(receiver=name, key=f"{key}-inner", worker_pid=os.getpid())
    if swallow:
        try:  # not in an atomic block of its own: the transaction can only roll back
            Call.objects.create(
                id=Call.objects.order_by("id").first().id, receiver=name, key=key, worker_pid=0
            )
        except IntegrityError:
            pass


def _steal_lease(event_id):
    """What another worker does when it reclaims the event: a new token, committed from
    another connection (a thread has its own)."""

    def steal():
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"UPDATE {TABLE} SET lease_token = %s WHERE id = %s", ["stolen", event_id])
        finally:
            connection.close()

    thread = threading.Thread(target=steal)
    thread.start()
    thread.join()


@outbox.receiver(atomic_work, atomic=True, max_attempts=5)
def atomic_record(sender, key, **kwargs):
    _misbehave("atomic", key, **kwargs)


@outbox.receiver(plain_work, max_attempts=5)
def plain_record(sender, key, **kwargs):
    _misbehave("plain", key, **kwargs)


@outbox.receiver(atomic_slow, atomic=True, timeout=0.5, max_attempts=2)
def atomic_sleeper(sender, key, sleep, **kwargs):
    Call.objects.create(receiver="atomic_slow", key=key, worker_pid=os.getpid())
    time.sleep(sleep)


def not_connected(sender, **kwargs):
    """Never connected: the registration tests try to connect it in ways that are refused."""


async def not_connected_async(sender, **kwargs):
    """Never connected, as not_connected."""
