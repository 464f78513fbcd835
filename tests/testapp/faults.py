"""Signals and receivers for the fault tests: probes for the property tests, receivers that
exit, hang or do nothing, and the chaos receiver that records every call durably.

Imported by the test app's ``ready()``, so worker processes register them too.
"""

from __future__ import annotations

import os
import time

import django.dispatch

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
    """Raises SystemExit or KeyboardInterrupt, as a receiver calling sys.exit() would."""
    raise {"SystemExit": SystemExit(3), "KeyboardInterrupt": KeyboardInterrupt()}[kind]


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
        cursor.execute("SELECT pg_sleep(3600)" if connection.vendor == "postgresql" else "SELECT 1")


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
