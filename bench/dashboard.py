"""The admin dashboard on a big table: 1,000,000 events on PostgreSQL.

    make bench-dashboard        # or: python bench/dashboard.py [--events N] [--days D] [--runs R]

Times whole GET requests of the dashboard through Django's test client (middleware, the
queries, the SVG charts, the template), with the cache emptied before each request, for
the last hour and the last day, every queue and one; then once from the cache. Prints the
plan of each query (EXPLAIN ANALYZE): the index it reads and how long it took. The
events are spread over ``--days`` days (the newest 1% still pending), so the last day
holds about ``events / days`` of them. Not part of ``make test``: filling the table takes
a minute.
"""

from __future__ import annotations

import argparse
import re

from admin_setup import operator_client, report, setup_django, timed, vacuum


def fill(total: int, days: float) -> None:
    """Replace every event with ``total`` rows over the last ``days`` days, as the worker
    leaves them: started_at and finished_at set, latencies and durations skewed, three
    queues, eight receivers, 2% failed, 0.5% discarded, the newest 1% pending."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_event RESTART IDENTITY")
        cursor.execute(
            f"""
            INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts,
                available_at, worker, created_at, started_at, finished_at, last_error,
                last_traceback, queue)
            SELECT 'tests.testapp.signals.work', 'bench.receivers.r' || (n % 8), '{{}}'::jsonb,
                st, 1, 8, t, 'bench:1', t,
                CASE WHEN st IN ('done', 'failed') THEN t + lat END,
                CASE WHEN st IN ('done', 'failed', 'discarded') THEN t + lat + took END,
                CASE WHEN st = 'failed' THEN 'ConnectionRefusedError: [Errno 111] refused' ELSE '' END,
                '', CASE n % 3 WHEN 0 THEN 'default' WHEN 1 THEN 'mail' ELSE 'reports' END
            FROM (
                SELECT n,
                    CASE WHEN n > {total} * 0.99 THEN 'pending'
                         WHEN (n::bigint * 7919) % 1000 < 20 THEN 'failed'
                         WHEN (n::bigint * 7919) % 1000 < 25 THEN 'discarded'
                         ELSE 'done' END AS st,
                    now() - make_interval(secs => ({total} - n) * {days} * 86400.0 / {total}) AS t,
                    make_interval(secs => 0.002 + power(random(), 3) * 5) AS lat,
                    make_interval(secs => power(random(), 4) * (n % 8 + 1)) AS took
                FROM generate_series(1, {total}) n
            ) rows
            ORDER BY n
            """
        )
    vacuum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="reuse the table if it has --events rows")
    args = parser.parse_args()
    setup_django()

    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse
    from django.utils import timezone

    from outbox.models import Event

    if not (args.keep and Event.objects.count() == args.events):
        fill(args.events, args.days)
    day = Event.objects.filter(finished_at__gte=timezone.now() - timezone.timedelta(days=1)).count()
    waiting = Event.objects.filter(status__in=["pending", "running"]).count()
    client = operator_client()
    base = reverse("admin:outbox_event_dashboard")
    print(
        f"{args.events:,} events over {args.days:g} days ({day:,} finished in the last day, "
        f"{waiting:,} waiting), PostgreSQL {connection.pg_version // 10000}"
    )

    def uncached(url: str) -> None:
        cache.clear()
        assert client.get(url).status_code == 200, url

    for label, query in [
        ("last hour, every queue", "?window=hour"),
        ("last hour, queue mail", "?window=hour&queue=mail"),
        ("last day, every queue", "?window=day"),
        ("last day, queue mail", "?window=day&queue=mail"),
    ]:
        with CaptureQueriesContext(connection) as seen:
            uncached(base + query)
        sqls = [q["sql"] for q in seen.captured_queries if "outbox_event" in q["sql"]]
        report(
            f"dashboard, {label} ({len(sqls)} event queries)",
            timed(lambda q=query: uncached(base + q), args.runs),
        )
        if label.startswith("last day"):
            for sql in sqls:
                explain(connection, sql)
    client.get(base + "?window=day")
    report("dashboard, last day, from the cache", timed(lambda: client.get(base + "?window=day"), args.runs))


def explain(connection, sql: str) -> None:
    """One line per query: the indexes its plan reads, any scan of the table, its time."""
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    indexes = sorted(set(re.findall(r"(?:on|using) (outbox_event_\w+)", plan)))
    scans = "SEQ SCAN" if "Seq Scan on outbox_event" in plan else "no seq scan"
    took = re.search(r"Execution Time: ([\d.]+) ms", plan)
    print(f"    {', '.join(indexes) or '-':<48} {scans:<12} {took.group(1) if took else '?':>8} ms")


if __name__ == "__main__":
    main()
