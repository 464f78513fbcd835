"""Signals and receivers for the fault tests: probes for the property tests, receivers that
exit, hang or do nothing, and the chaos receiver that records every call durably.

Imported by the test app's ``ready()``, so worker processes register them too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import django.dispatch
from django.db import DatabaseError, connection, transaction

import outbox

from .models import Call

#: Property tests send these; ``probe`` has two deferred receivers and one on_commit receiver.
probe = django.dispatch.Signal()
probe_other = django.dispatch.Signal()
#: Receivers here that misbehave on purpose.
misbehave = django.dispatch.Signal()
hang = django.dispatch.Signal()
spin = django.dispatch.Signal()
hang_in_database = django.dispatch.Signal()
leave_transaction = django.dispatch.Signal()
unrecordable = django.dispatch.Signal()
ctrl_c = django.dispatch.Signal()
crash = django.dispatch.Signal()
#: The chaos and memory runs.
chaos = django.dispatch.Signal()
nothing = django.dispatch.Signal()

#: (receiver, n) for every probe call in this process.
PROBES: list[tuple[str, int]] = []


@outbox.receiver(probe)
def probe_a(sender, n, **kwargs):
    PROBES.append(("probe_a", n))


@outbox.receiver(probe)
def probe_b(sender, n, **kwargs):
    PROBES.append(("probe_b", n))


@outbox.receiver(probe, delivery="on_commit")
def probe_now(sender, n, **kwargs):
    PROBES.append(("probe_now", n))


@outbox.receiver(probe_other)
def probe_c(sender, n, **kwargs):
    PROBES.append(("probe_c", n))


@outbox.receiver(misbehave, max_attempts=1)
def raise_base_exception(sender, kind, **kwargs):
    """Raises an exception that is not an ``Exception``: SystemExit, as a receiver calling
    sys.exit() would, KeyboardInterrupt, or what async code and generators raise."""
    raise {
        "SystemExit": SystemExit(3),
        "KeyboardInterrupt": KeyboardInterrupt(),
        "CancelledError": asyncio.CancelledError("the task was cancelled"),
        "GeneratorExit": GeneratorExit(),
        "BaseException": BaseException("a bare BaseException"),
    }[kind]


class UnprintableError(Exception):
    """An exception with no text: its ``__str__`` and ``__repr__`` raise."""

    def __str__(self):
        raise ValueError("no text for you")

    def __repr__(self):
        raise ValueError("no repr either")


@outbox.receiver(unrecordable, max_attempts=1)
def raise_unrecordable(sender, kind, **kwargs):
    """Raises an exception whose text the database would refuse as it stands."""
    raise {
        "str() raises": UnprintableError(),
        "NUL": RuntimeError("before\x00after"),
        "lone surrogate": RuntimeError("half a pair: \ud800"),
    }[kind]


@outbox.receiver(ctrl_c, max_attempts=1)
def presses_ctrl_c(sender, **kwargs):
    """Sends SIGINT to its own process, as Ctrl-C in a terminal does, then finishes."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)  # the signal is handled meanwhile, whatever handles it
    Call.objects.create(receiver="presses_ctrl_c", key="", worker_pid=os.getpid())


#: How ``leaves_transaction`` leaves the worker's connection.
LEAVE_TRANSACTION = [
    "set_autocommit(False)",
    "atomic() never exited",
    "raw BEGIN",
    "raw BEGIN, failed, swallowed",
]


@outbox.receiver(leave_transaction, max_attempts=1)
def leaves_transaction(sender, how, key, then_raise=False, **kwargs):
    """Opens a transaction, writes a Call row in it and returns (or raises) without ending it."""
    if how == "set_autocommit(False)":
        transaction.set_autocommit(False)
    elif how == "atomic() never exited":
        transaction.atomic().__enter__()
    else:
        with connection.cursor() as cursor:
            cursor.execute("BEGIN")
    Call.objects.create(receiver="leaves_transaction", key=key, worker_pid=os.getpid())
    if how == "raw BEGIN, failed, swallowed":
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT * FROM no_such_table")
        except DatabaseError:
            pass  # on PostgreSQL the transaction is now aborted, and still open
    if then_raise:
        raise RuntimeError("the mail server is down")


@outbox.receiver(hang, timeout=0.5, max_attempts=1)
def hangs(sender, **kwargs):
    """Blocks in a system call far longer than its timeout."""
    time.sleep(3600)


@outbox.receiver(spin, timeout=0.5, max_attempts=1)
def spins(sender, **kwargs):
    """Burns CPU in pure Python far longer than its timeout."""
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        pass


@outbox.receiver(hang_in_database, timeout=0.5, max_attempts=1)
def hangs_in_database(sender, **kwargs):
    """Waits on the database (a lock, a slow query) far longer than its timeout."""
    from django.db import connection

    with connection.cursor() as cursor:
        sleep = {"postgresql": "SELECT pg_sleep(3600)", "mysql": "SELECT SLEEP(3600)"}
        cursor.execute(sleep.get(connection.vendor, "SELECT 1"))


@outbox.receiver(crash, max_attempts=2)
def record_or_crash(sender, key, die=False, **kwargs):
    """Kills its worker process at once when ``die`` (no exception, no cleanup: as a
    segfault or an OOM kill would); otherwise one durable row per call."""
    if die:
        os._exit(3)
    Call.objects.create(receiver="record_or_crash", key=key, worker_pid=os.getpid())


@outbox.receiver(chaos)
def chaos_record(sender, key, pause=0.0, **kwargs):
    """One durable row per call, committed at once (the worker runs receivers in autocommit),
    so a call whose completion is lost to a kill is still counted. ``pause`` stretches the
    run so that kills land mid-batch whatever the machine's speed."""
    if pause:
        time.sleep(pause)
    Call.objects.create(receiver="chaos", key=key, worker_pid=os.getpid())


@outbox.receiver(nothing)
def does_nothing(sender, **kwargs):
    """For the memory run: only the worker's own cost is measured."""
