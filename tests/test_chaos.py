"""Chaos on PostgreSQL (and on MariaDB/MySQL, but the server restart), at a size that fits
in CI: killed workers, lost connections and a restarted server lose nothing, and
duplicates stay within the rows in flight.
``make chaos`` runs the same code (``stress/chaos.py``) at full size."""

from __future__ import annotations

import signal
import time

import pytest
from django.db import connection

from outbox.models import Event
from stress import chaos
from tests.conftest import disruptive, listening_sessions, postgres_only, skip_locked_only, wait_for
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = [pytest.mark.django_db(transaction=True), skip_locked_only, pytest.mark.processes]


def _terminate_other_sessions() -> int:
    """What a server restart does to every client, without disturbing other databases."""
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
            sessions = [row[0] for row in cursor.fetchall()]
            for session in sessions:
                cursor.execute(f"KILL CONNECTION {int(session)}")
            return len(sessions)
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@postgres_only  # idle means waiting on LISTEN
def test_an_idle_worker_survives_losing_its_connections(worker_process):
    worker = worker_process("--poll-interval", "0.5")
    work.send(sender=None, key="before")
    wait_for(lambda: Call.objects.filter(key="before").exists())
    wait_for(lambda: listening_sessions() == 1)  # idle, waiting on its LISTEN connection
    assert _terminate_other_sessions() >= 1
    time.sleep(1.5)
    assert worker.process.poll() is None, "the worker is still running"
    work.send(sender=None, key="after")
    wait_for(lambda: Call.objects.filter(key="after").exists())
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_busy_worker_survives_losing_its_connections(concurrency, worker_process):
    for i in range(200):
        work.send(sender=None, key=str(i), sleep=0.01)
    worker = worker_process(
        "--poll-interval",
        "0.5",
        "--batch-size",
        "20",
        "--lease-seconds",
        "2",
        "--concurrency",
        str(concurrency),
    )
    wait_for(lambda: Call.objects.count() >= 20)
    _terminate_other_sessions()
    wait_for(lambda: not Event.objects.exclude(status="done").exists(), timeout=60)
    assert worker.process.poll() is None
    assert Call.objects.values("key").distinct().count() == 200
    # Calls whose completion the lost connection swallowed run again; at most the batches
    # in hand (one at concurrency 1; at concurrency N, N receivers and the batch feeding them).
    assert Call.objects.count() - 200 <= 20 * (1 if concurrency == 1 else 2)


@pytest.mark.parametrize("concurrency", [1, 8])
def test_four_workers_racing_without_faults_run_nothing_twice(concurrency):
    report = chaos.run(800, 4, kills=False, batch_size=20, seed=1, concurrency=concurrency)
    print(f"\n{report}")
    assert report.problems() == []
    assert (report.duplicates, report.lost, report.crashes) == (0, 0, 0)


@pytest.mark.parametrize("concurrency", [1, 8])
def test_sigkilled_workers_lose_nothing_and_duplicates_stay_within_rows_in_flight(concurrency):
    # 20 ms a call per thread: about 5 s of work per worker, so kills land mid-batch on a
    # fast machine too (MariaDB drains 1,000 events of 20 ms at concurrency 8 in under 2 s).
    report = chaos.run(
        1000,
        4,
        kill_interval=(1.0, 2.5),
        batch_size=20,
        seed=2,
        pause=0.02 * concurrency,
        concurrency=concurrency,
    )
    print(f"\n{report}")
    assert report.kills >= 2 and report.in_flight_at_kills > 0, "the kills hit workers holding rows"
    assert report.problems() == []


@postgres_only
@pytest.mark.skipif(chaos.restart_command() is None, reason="no pg_ctlcluster to restart PostgreSQL")
@disruptive
def test_a_postgresql_restart_amid_kills_loses_nothing():
    report = chaos.run(1000, 4, restart=True, kill_interval=(1.5, 3.0), batch_size=20, seed=3, pause=0.02)
    print(f"\n{report}")
    assert report.restarts == 1
    assert report.problems() == []
