"""The worker keeps the events table's planner statistics fresh (outbox.planner_statistics):
a burst after statistics taken on an empty table is analyzed, between batches; a table whose
statistics still hold is left alone; WORKER_ANALYZE=False leaves it all to autovacuum."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test import override_settings

from outbox import planner_statistics
from tests.conftest import postgres_only, wait_for

pytestmark = [postgres_only, pytest.mark.django_db(transaction=True)]

_ROWS = (
    "INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts, "
    "available_at, worker, created_at, last_error, last_traceback) "
    "SELECT 'tests.testapp.faults.nothing', 'tests.testapp.faults.does_nothing', "
    "'{\"sender\": null, \"kwargs\": {}}'::jsonb, 'done', 1, 8, now(), '', now(), '', '' "
    "FROM generate_series(1, %s)"
)


def _analyzed() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'outbox_event'")
        return cursor.fetchone()[0]


def _flush() -> None:
    """This session's counts into the statistics system now (else within a second)."""
    if connection.pg_version < 150000:  # no pg_stat_force_next_flush() before 15
        time.sleep(1.1)
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")


def _burst(rows: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE outbox_event")  # while it is empty
        cursor.execute(_ROWS, [rows])


def test_statistics_of_an_empty_table_are_stale_after_a_burst_and_fresh_after_analyze():
    _burst(12_000)
    wait_for(lambda: planner_statistics.stale("default"), timeout=10)  # flushed within a second
    before = _analyzed()
    assert planner_statistics.analyze_if_stale("default")
    assert _analyzed() == before + 1
    assert planner_statistics.stale("default") is False
    assert not planner_statistics.analyze_if_stale("default"), "nothing changed since"


def test_fewer_changes_than_the_floor_or_than_the_rows_counted_are_not_stale():
    _burst(planner_statistics.STALE_MIN_CHANGES - 1000)
    _flush()
    assert planner_statistics.stale("default") is False
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE outbox_event")  # the statistics count 9,000 rows
        cursor.execute(_ROWS, [planner_statistics.STALE_MIN_CHANGES + 100])
    # 10,100 changed beside 9,000 counted: stale. (Under 9,000 changed would not be.)
    wait_for(lambda: planner_statistics.stale("default"), timeout=10)


def test_a_worker_analyzes_stale_statistics_between_batches(worker_process):
    _burst(12_000)
    wait_for(lambda: planner_statistics.stale("default"), timeout=10)
    before = _analyzed()
    worker = worker_process("-v", "1")
    wait_for(lambda: _analyzed() > before, timeout=30)
    wait_for(lambda: "its planner statistics were stale" in worker.output, timeout=10)


def test_worker_analyze_false_leaves_statistics_to_autovacuum(worker_process):
    _burst(12_000)
    wait_for(lambda: planner_statistics.stale("default"), timeout=10)
    before = _analyzed()
    worker = worker_process("-v", "1", env={"OUTBOX_TEST_WORKER_ANALYZE": "0"})
    time.sleep(2)  # twenty turns of its idle loop; with WORKER_ANALYZE on, the first analyzes
    assert _analyzed() == before
    assert "planner statistics" not in worker.output


@override_settings(OUTBOX={"WORKER_ANALYZE": "yes"})
def test_worker_analyze_takes_true_or_false():
    from django.core import checks

    errors = [e for e in checks.run_checks() if e.id == "outbox.E004"]
    assert any("WORKER_ANALYZE" in e.msg for e in errors)


def _due_index_entries() -> float:
    """The live entries the planner believes ``outbox_event_due`` holds."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'outbox_event_due'")
        return cursor.fetchone()[0]


def test_the_worker_s_analyze_gives_the_planner_the_due_index_as_it_is_behind_dead_rows():
    # As tests/test_scale.py builds it: 20,000 finished events whose dead entries a held
    # snapshot keeps, then 300 due; the statistics were taken while the table was empty.
    from tests.test_scale import dead_rows_kept

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE outbox_event")
    with dead_rows_kept(20000, due=300):
        assert _due_index_entries() < 50, "stale: the planner believes the due index nearly empty"
        wait_for(lambda: planner_statistics.stale("default"), timeout=10)
        assert planner_statistics.analyze_if_stale("default")
        # Every live row is in ANALYZE's sample here (20,300 < 30,000): the estimate is exact.
        assert _due_index_entries() == 300
