"""Operator commands on a big outbox table (PostgreSQL): what status, replay and prune cost.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/outbox_bench_ops \\
        .venv/bin/python bench/operating.py [--rows 1000000] [--runs 5]

Fills ``outbox_event`` with ``--rows`` done events (finished over the last 30 days), 100
failed and 1,000 pending, vacuums and analyzes it (as autovacuum would), then prints the
median of ``--runs`` timings of: ``outbox_status`` (default, and with ``--count-done``),
the full ``GROUP BY status`` it avoids, a replay dry run of the failed events, and one
prune of the done events older than 7 days (rows/s, the slowest DELETE, WAL written).
The database is created if missing and its outbox table emptied first.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        sys.exit("set DATABASE_URL to a PostgreSQL database")
    _create_database(connection)
    call_command("migrate", verbosity=0)

    from outbox import pruning
    from outbox.models import Event
    from outbox.monitoring import collect
    from outbox.operations import replay, select_events

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_event")
        started = time.perf_counter()
        cursor.execute(
            "INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts, "
            "available_at, worker, created_at, finished_at, last_error, last_traceback) "
            "SELECT 'app.signals.s', 'app.receivers.r' || (i %% 10), '{\"a\": 1}'::jsonb, "
            "CASE WHEN i <= 100 THEN 'failed' ELSE 'done' END, 1, 8, t, '', t, t, '', '' "
            "FROM (SELECT i, now() - interval '30 days' * (1 - i::float / %s) AS t "
            "      FROM generate_series(1, %s) AS i) AS s",
            [args.rows, args.rows],
        )
        cursor.execute(
            "INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts, "
            "available_at, worker, created_at, last_error, last_traceback) "
            "SELECT 'app.signals.s', 'app.receivers.r', '{}'::jsonb, 'pending', 0, 8, now(), '', now(), "
            "'', '' "
            "FROM generate_series(1, 1000)"
        )
        cursor.execute("VACUUM ANALYZE outbox_event")
        print(f"filled {args.rows:,} done/failed + 1,000 pending in {time.perf_counter() - started:.1f}s")

    def median(func) -> float:
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            func()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    def group_by() -> None:
        list(Event.objects.order_by().values("status").annotate(n=django.db.models.Count("pk")))

    print(f"outbox_status:                {median(lambda: collect('default')):9.1f} ms")
    print(f"outbox_status --count-done:   {median(lambda: collect('default', count_done=True)):9.1f} ms")
    print(f"GROUP BY status (avoided):    {median(group_by):9.1f} ms")
    dry = median(lambda: replay(select_events(statuses=["failed"]), dry_run=True))
    print(f"outbox_replay --dry-run:      {dry:9.1f} ms")

    old = pruning.count_prunable("default", datetime.timedelta(days=7))["done"]
    deletes, pages = [], []

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if sql.startswith("DELETE"):
                deletes.append(time.perf_counter() - started)
            elif sql.startswith("SELECT"):
                pages.append(time.perf_counter() - started)

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()")
        [before] = cursor.fetchone()
    started = time.perf_counter()
    with connection.execute_wrapper(timed):
        result = pruning.prune("default", datetime.timedelta(days=7), batch_size=1000)
    elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [before])
        [wal] = cursor.fetchone()
    assert abs(result.total - old) < 100, (result.total, old)  # the cutoff moved on meanwhile
    print(
        f"outbox_prune --older-than 7d: {result.total:,} rows in {result.batches} batches, {elapsed:.1f}s "
        f"({result.total / elapsed:,.0f} rows/s); WAL {wal / 2**20:.0f} MiB"
    )
    for name, times in (("DELETE of a page", deletes), ("SELECT of a page", pages)):
        ms = sorted(t * 1000 for t in times)
        print(
            f"  {name}: median {statistics.median(ms):.1f} ms, p99 {ms[int(len(ms) * 0.99)]:.1f} ms, "
            f"max {ms[-1]:.1f} ms (batch {times.index(max(times)) + 1}); "
            f"first tenth {statistics.median(ms_in(times, 0)):.1f} ms, "
            f"last tenth {statistics.median(ms_in(times, 9)):.1f} ms"
        )


def ms_in(times: list[float], tenth: int) -> list[float]:
    """The timings of one tenth of the run, in milliseconds, in run order."""
    size = max(1, len(times) // 10)
    return [t * 1000 for t in times[tenth * size : (tenth + 1) * size]] or [0.0]


def _create_database(connection) -> None:
    import psycopg

    name = connection.settings_dict["NAME"]
    params = connection.get_connection_params()
    params["dbname"] = "postgres"
    with psycopg.connect(**params, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__":
    main()
