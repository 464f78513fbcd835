"""The claim with ordering keys: its time with 10,000 due events and 10,000 blocked ones.

    make bench-ordering          # or: python bench/ordering_claim.py [--runs R] [--due N] [--blocked N]

On SQLite (a file in /tmp) and PostgreSQL (BENCH_DATABASE_URL, default a database of its
own on the local server). The table holds ``--due`` due events, each with its own key (so
every candidate pays the head-of-key probe), and ``--blocked`` events of one key behind a
``failed`` event, written before them (so they come first in due order). Each run claims
one batch of 100 and hands it back (queries.claim, then queries.release). Three layouts:

- parked: the blocked events parked, as the outbox leaves them (record_failure, insert);
- unparked: the same events left due, as if parking did not exist: the claim must skip
  each one by its probe, which is what parking saves;
- every queue / one queue: the claim of all queues (outbox_event_due) and of one named
  queue (outbox_event_queue_due);
- no keys: the due events without keys, the baseline the head-of-key probes add to.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/outbox_bench_ordering")
SQLITE_PATH = "/tmp/outbox_bench_ordering.sqlite3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--blocked", type=int, default=10_000)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], help="one of them (default: both)")
    args = parser.parse_args()
    if args.database is None:
        for database in ("sqlite", "postgresql"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--database", database], check=True)
        return
    url = f"sqlite:///{SQLITE_PATH}" if args.database == "sqlite" else PG_URL
    setup_django(url, args.database)
    run(args)


def setup_django(url: str, vendor: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    sys.path.insert(0, str(ROOT))
    if vendor == "sqlite":
        Path(SQLITE_PATH).unlink(missing_ok=True)
    else:
        import dj_database_url
        import psycopg

        name = dj_database_url.parse(url)["NAME"]
        with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


FILL = """
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < %s)
INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts, available_at,
    worker, created_at, last_error, last_traceback, queue, ordering_key)
SELECT 'tests.testapp.signals.ordered', 'tests.testapp.routed.in_order',
    '{"sender": null, "kwargs": {}}', %s, 0, 3, %s, '', %s, '', '', %s, {key} FROM seq
"""


def fill(count: int, status: str, when, queue: str, key: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        when = connection.ops.adapt_datetimefield_value(when)
        cursor.execute(FILL.replace("{key}", key), [count, status, when, when, queue])


def run(args: argparse.Namespace) -> None:
    import datetime

    from django.db import connection
    from django.utils import timezone

    from outbox import queries
    from outbox.models import Event

    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM outbox_event")
    fill(1, "failed", now - datetime.timedelta(hours=2), "default", "'blocked'")
    fill(args.blocked, "pending", now - datetime.timedelta(hours=1), "default", "'blocked'")
    fill(args.due, "pending", now - datetime.timedelta(minutes=30), "default", "'k' || i")
    analyze(connection)

    def claim_times(queues=None) -> list[float]:
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            token, rows = queries.claim("default", 100, 60, "bench", queues=queues)
            times.append((time.perf_counter() - started) * 1000)
            assert len(rows) == 100 and all(row.receiver for row in rows)
            queries.release("default", token, [row.id for row in rows])
        return times

    blocked = Event.objects.filter(ordering_key="blocked", status="pending")
    results = {}
    blocked.update(available_at=queries.parked())
    analyze(connection)
    results["parked, every queue"] = claim_times()
    results["parked, one queue"] = claim_times(["default"])
    blocked.update(available_at=now - datetime.timedelta(hours=1))
    analyze(connection)
    results["unparked, every queue"] = claim_times()
    results["unparked, one queue"] = claim_times(["default"])
    # The baseline: the same due events without keys (no probe), the blocked ones parked.
    Event.objects.exclude(ordering_key="blocked").update(ordering_key=None)
    blocked.update(available_at=queries.parked())
    analyze(connection)
    results["no keys, every queue"] = claim_times()
    print(f"\n{connection.vendor}: claim of 100 among {args.due:,} due and {args.blocked:,} blocked events")
    for name, times in results.items():
        print(f"  {name:<24} median {statistics.median(times):7.2f} ms   max {max(times):7.2f} ms")


def analyze(connection) -> None:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE outbox_event" if connection.vendor == "postgresql" else "ANALYZE")


if __name__ == "__main__":
    main()
