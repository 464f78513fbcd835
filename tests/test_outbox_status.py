"""``manage.py outbox_status``: what an operator or a monitor learns, and its exit status."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from outbox.models import Event
from outbox.monitoring import collect
from outbox.operations import replay, select_events
from outbox.pruning import prune
from tests.conftest import ROOT, postgres_only, worker_env
from tests.operating import FLAKY, done, failed, finished_ago, ping, run

pytestmark = pytest.mark.django_db(transaction=True)


def status(*args: str) -> dict:
    result = run("outbox_status", "--json", *args)
    return json.loads(result.out)


def test_counts_events_by_status_and_by_receiver():
    failed(2)
    done(3)
    ping(4)
    report = status()
    assert report["by_status"] == {
        "pending": 4,
        "running": 0,
        "done": None,  # not counted unless asked: the one count that grows with the table
        "failed": 2,
        "discarded": 0,
    }
    assert report["by_receiver"] == {FLAKY: {"pending": 4, "failed": 2}}
    assert report["due"] == 4
    assert report["healthy"] is True


def test_count_done_counts_done_events_too():
    done(3)
    report = status("--count-done")
    assert report["by_status"]["done"] == 3
    assert report["by_receiver"] == {FLAKY: {"done": 3}}


def test_lag_is_how_long_the_oldest_due_event_has_waited():
    old, new = ping(2)
    Event.objects.filter(pk=old).update(available_at=timezone.now() - datetime.timedelta(seconds=90))
    report = status()
    assert 89 < report["lag_seconds"] < 100
    assert report["oldest_due_at"] is not None


def test_events_scheduled_for_later_and_live_leases_are_not_lag():
    retry_later, running = ping(2)
    later = timezone.now() + datetime.timedelta(minutes=5)
    Event.objects.filter(pk=retry_later).update(available_at=later)
    Event.objects.filter(pk=running).update(status="running", available_at=later, lease_token="t")
    report = status()
    assert report["lag_seconds"] == 0
    assert report["due"] == 0
    assert report["by_status"]["pending"] == 1
    assert report["by_status"]["running"] == 1


def test_an_expired_lease_counts_as_lag_from_its_expiry():
    [event] = ping(1)
    expired = timezone.now() - datetime.timedelta(seconds=30)
    Event.objects.filter(pk=event).update(status="running", available_at=expired, lease_token="t")
    report = status()
    assert report["due"] == 1
    assert 29 < report["lag_seconds"] < 40


def test_rate_counts_done_events_finished_in_the_last_1_5_and_15_minutes():
    ids = done(5)
    finished_ago(ids[0:1], seconds=20)
    finished_ago(ids[1:2], minutes=3)
    finished_ago(ids[2:3], minutes=10)
    finished_ago(ids[3:5], minutes=20)
    report = status()
    assert report["done_in_last_minutes"] == {"1": 1, "5": 2, "15": 3}
    assert report["rate_per_second"]["1"] == round(1 / 60, 3)


def test_lag_over_max_lag_exits_3_and_says_why():
    [event] = ping(1)
    Event.objects.filter(pk=event).update(available_at=timezone.now() - datetime.timedelta(minutes=2))
    assert run("outbox_status", "--max-lag", "300").code == 0
    result = run("outbox_status", "--max-lag", "60")
    assert result.code == 3
    assert "--max-lag 60" in result.err
    assert "PROBLEM: lag" in result.out


def test_failures_over_max_failed_exit_3_with_the_report_still_printed():
    assert run("outbox_status", "--max-failed", "0").code == 0
    failed(1)
    result = run("outbox_status", "--json", "--max-failed", "0")
    assert result.code == 3
    assert "1 failed events is over --max-failed 0" in result.err
    report = json.loads(result.out)
    assert report["healthy"] is False
    assert report["problems"] == ["1 failed events is over --max-failed 0"]
    assert run("outbox_status", "--max-failed", "1").code == 0


def test_backlog_over_max_due_exits_3():
    ping(3)
    assert run("outbox_status", "--max-due", "3").code == 0
    assert run("outbox_status", "--max-due", "2").code == 3


def test_text_report_names_each_receiver_and_status():
    failed(1)
    ping(2)
    out = run("outbox_status").out
    assert "lag: " in out
    assert "pending 2, running 0, done -, failed 1, discarded 0" in out
    assert FLAKY in out


def test_unknown_database_alias_is_a_clear_error():
    result = run("outbox_status", "--database", "nope")
    assert result.code == 1
    assert "unknown database alias 'nope'" in result.err


@postgres_only
def test_reports_table_size_and_vacuum_state_on_postgresql():
    done(1)
    table = status()["table"]
    assert set(table) == {
        "live_rows",
        "dead_rows",
        "last_vacuum",
        "last_autovacuum",
        "last_autoanalyze",
        "size_bytes",
        "autovacuum_on",
        "horizon",
    }
    assert table["size_bytes"] > 0
    with connection.cursor() as cursor:
        cursor.execute("SHOW autovacuum")
        assert table["autovacuum_on"] is (cursor.fetchone()[0] == "on")


@pytest.fixture
def held_snapshot():
    """Another session in a REPEATABLE READ transaction with its snapshot taken: it holds
    the xmin horizon back (VACUUM keeps every row version it might still read)."""
    import psycopg

    params = dict(connection.get_connection_params())
    params.pop("cursor_factory", None)
    with psycopg.connect(**params) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM outbox_event").fetchone()
        yield holder.info.backend_pid
        holder.rollback()


def _finish_unvacuumably(count: int) -> None:
    """Insert ``count`` events and finish them in later transactions: dead row versions."""
    ping(count)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE outbox_event SET status = 'running'")
        cursor.execute("UPDATE outbox_event SET status = 'done', finished_at = now()")


@postgres_only
def test_names_the_transaction_that_holds_back_vacuum_and_the_dead_rows_it_keeps(held_snapshot, monkeypatch):
    from outbox import monitoring
    from tests.conftest import wait_for

    _finish_unvacuumably(30)
    # The statistics views learn of the dead rows when the sessions flush their counts.
    wait_for(lambda: status()["table"]["dead_rows"] >= 30, 30)
    report = status()
    assert report["table"]["horizon"]["pid"] == held_snapshot
    assert report["table"]["horizon"]["xmin_age"] >= 2  # the two transactions since it began
    assert report["attention"] == []  # under the thresholds
    monkeypatch.setattr(monitoring, "DEAD_ROWS_WARNING", 10)
    monkeypatch.setattr(monitoring, "HORIZON_WARNING_SECONDS", -1.0)
    notes = status()["attention"]
    assert [note.split(" ")[:2] for note in notes] == [["outbox_event", "holds"], ["a", "transaction"]]
    assert f"pid {held_snapshot}" in notes[1]
    assert f"pid {held_snapshot}" in run("outbox_status").out


@postgres_only
def test_a_worker_warns_while_a_transaction_keeps_vacuum_from_cleaning(held_snapshot, monkeypatch, caplog):
    import threading

    from outbox import monitoring
    from outbox.worker import Worker
    from tests.conftest import wait_for

    monkeypatch.setattr(monitoring, "HORIZON_WARNING_SECONDS", -1.0)
    worker = Worker(listen=False, poll_interval=0.05)
    thread = threading.Thread(target=worker.run)
    with caplog.at_level("WARNING", logger="outbox"):
        thread.start()
        try:
            wait_for(lambda: f"pid {held_snapshot}" in caplog.text, 10)
        finally:
            worker.stop()
            thread.join(10)
    assert "holds the xmin horizon back" in caplog.text


def _status_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "django", "outbox_status", "--settings=tests.settings", *args],
        cwd=ROOT,
        env={**os.environ, **worker_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.processes
def test_exit_status_of_a_real_process_for_health_checks():
    healthy = _status_process("--max-lag", "60", "--max-failed", "0")
    assert healthy.returncode == 0, healthy.stderr
    failed(1)
    unhealthy = _status_process("--max-lag", "60", "--max-failed", "0")
    assert unhealthy.returncode == 3
    assert "1 failed events is over --max-failed 0" in unhealthy.stderr
    usage = _status_process("--max-lag", "soon")
    assert usage.returncode == 2
    assert "'soon' is not a number" in usage.stderr
    unknown = _status_process("--database", "nope")
    assert unknown.returncode == 1


def _bulk_done(n: int) -> None:
    """n done events a day old, written in one statement, and fresh planner statistics."""
    day_ago = connection.ops.adapt_datetimefield_value(timezone.now() - datetime.timedelta(days=1))
    seq = "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < %s) "
    insert = (
        f"INSERT INTO outbox_event ({connection.ops.quote_name('signal')}, receiver, payload, status, "
        "attempts, max_attempts, available_at, worker, created_at, finished_at, last_error, last_traceback) "
    )
    rows = "SELECT 's', 'r', '{}', 'done', 1, 8, %s, '', %s, %s, '', '' FROM seq"
    mysql = connection.vendor == "mysql"
    with connection.cursor() as cursor:
        # MySQL and MariaDB put the WITH after INSERT, and cap recursion at 1000 by default.
        if mysql:
            depth = "cte_max_recursion_depth" if _is_mysql8() else "max_recursive_iterations"
            cursor.execute(f"SET SESSION {depth} = %s", [n + 1])
        cursor.execute(insert + seq + rows if mysql else seq + insert + rows, [n, day_ago, day_ago, day_ago])
        analyze = {"postgresql": "ANALYZE outbox_event", "mysql": "ANALYZE TABLE outbox_event"}
        cursor.execute(analyze.get(connection.vendor, "ANALYZE"))
        if mysql:
            cursor.fetchall()


def _plans(run_queries) -> dict[str, str]:
    """The query plan of every SELECT on the event table that ``run_queries`` makes."""
    with CaptureQueriesContext(connection) as captured:
        run_queries()
    explain = "EXPLAIN QUERY PLAN" if connection.vendor == "sqlite" else "EXPLAIN"
    plans = {}
    with connection.cursor() as cursor:
        for query in captured.captured_queries:
            sql = query["sql"]
            if sql.startswith("SELECT") and "outbox_event" in sql and "pg_stat" not in sql:
                cursor.execute(f"{explain} {sql}")
                if connection.vendor == "mysql":  # one row per table read: name, access type, key
                    names = [c[0] for c in cursor.description]
                    steps = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                    plans[sql] = "\n".join(f"{s['table']} type={s['type']} key={s['key']}" for s in steps)
                else:
                    plans[sql] = "\n".join(str(row[-1]) for row in cursor.fetchall())
    return plans


def _is_mysql8() -> bool:
    return connection.vendor == "mysql" and not connection.mysql_is_mariadb


def _reads_whole_table(plan: str) -> bool:
    if connection.vendor == "postgresql":
        return "Seq Scan" in plan
    if connection.vendor == "mysql":  # "ALL": every row of that table
        return any(line.startswith("outbox_event ") and "type=ALL" in line for line in plan.splitlines())
    # SQLite: "SCAN outbox_event" without an index is a full table scan ("SCAN subquery"
    # reads what a subquery yielded).
    return any(line.startswith("SCAN outbox_event") and "INDEX" not in line for line in plan.splitlines())


def test_status_replay_and_prune_read_indexes_not_the_whole_table_of_done_events():
    _bulk_done(50_000)
    failed(1)
    ping(2)
    one_batch = iter([False])  # then True: stop after the first DELETE
    plans = {
        **_plans(lambda: collect("default")),
        **_plans(lambda: replay(select_events(statuses=["failed"]), dry_run=True)),
        **_plans(
            lambda: prune("default", datetime.timedelta(hours=1), should_stop=lambda: next(one_batch, True))
        ),
    }
    # Lag, due count, three counts (active, failed, discarded), rate, overdue receivers,
    # blocked keys and events; replay's selection; one prune page.
    assert len(plans) == 11
    for sql, plan in plans.items():
        assert not _reads_whole_table(plan), f"{sql}\n{plan}"
    assert Event.objects.filter(status="done").count() == 50_000 - 1000  # one batch pruned


@override_settings(USE_TZ=False)
def test_with_use_tz_false_reports_events_written_in_that_mode():
    late, _ = ping(2)
    Event.objects.filter(pk=late).update(available_at=timezone.now() - datetime.timedelta(seconds=90))
    assert timezone.is_naive(Event.objects.get(pk=late).available_at)
    report = status()
    assert 89 < report["lag_seconds"] < 100
    assert report["by_status"]["pending"] == 2
    text = run("outbox_status")
    assert text.code == 0, text.err
    assert "lag: 9" in text.out and "oldest due since " in text.out


def test_a_payload_nested_too_deeply_for_python_does_not_break_the_report():
    [event] = ping(1)
    depth = 5000 if connection.vendor == "postgresql" else 1000  # SQLite refuses deeper
    cast = "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE outbox_event SET payload = {cast} WHERE id = %s", ["[" * depth + "]" * depth, event]
        )
    for args in ((), ("--json",), ("--count-done",)):
        result = run("outbox_status", *args)
        assert result.code == 0, result.err
    assert status()["by_status"]["pending"] == 1


@postgres_only
def test_an_event_due_at_minus_infinity_is_reported_as_such_not_as_a_traceback():
    [event, _] = ping(2)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE outbox_event SET available_at = '-infinity' WHERE id = %s", [event])
    report = status()
    assert report["oldest_due_at"] == "-infinity"
    assert report["due"] == 2
    assert report["lag_seconds"] > 2000 * 365 * 86400  # waiting since year 1 at least
    text = run("outbox_status")
    assert text.code == 0, text.err
    assert "oldest due since -infinity" in text.out
    assert run("outbox_status", "--max-lag", "60").code == 3
