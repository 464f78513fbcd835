"""Shared by the admin benchmarks: a PostgreSQL database of their own, filled fast.

Rows are written with one ``INSERT ... SELECT generate_series`` (the admin is measured,
not the send path), shaped like the worker leaves them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/outbox_bench_admin"


def setup_django() -> None:
    """Point the test settings at the benchmark database, create and migrate it."""
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    sys.path.insert(0, str(ROOT))
    import dj_database_url
    import psycopg

    db = dj_database_url.parse(url)
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone():
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')

    import django
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    django.setup()
    setup_test_environment()  # lets the test client in (ALLOWED_HOSTS) without a server
    call_command("migrate", verbosity=0)


def fill(total: int, mix: dict[str, float]) -> None:
    """Replace every event with ``total`` rows, statuses in the proportions of ``mix``."""
    from django.db import connection

    bounds, upto = [], 0.0
    for status, share in mix.items():
        upto += share
        bounds.append(f"WHEN i <= {int(upto * total)} THEN '{status}'")
    status = f"CASE {' '.join(bounds)} ELSE 'done' END"
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_event RESTART IDENTITY")
        # Statuses interleaved by id (a permutation of i), as failures are in a real table.
        cursor.execute(
            f"""
            INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts,
                available_at, worker, created_at, finished_at, last_error, last_traceback)
            SELECT 'tests.testapp.signals.work', 'tests.testapp.receivers.' || rcv,
                jsonb_build_object('sender', NULL, 'kwargs', jsonb_build_object('key', 'invoice-' || n)),
                st, CASE WHEN st = 'failed' THEN 8 ELSE 1 END, 8, t, 'bench:1', t,
                CASE WHEN st IN ('done', 'failed', 'discarded') THEN t END,
                CASE WHEN st = 'failed' THEN 'ConnectionRefusedError: [Errno 111] refused' ELSE '' END,
                CASE WHEN st = 'failed' THEN 'Traceback (most recent call last):\n...' ELSE '' END
            FROM (
                SELECT n, {status} AS st, now() - make_interval(secs => {total} - n) AS t,
                    CASE WHEN n % 3 = 0 THEN 'record' ELSE 'flaky' END AS rcv
                FROM generate_series(1, {total}) n, LATERAL (SELECT (n::bigint * 7919) % {total} + 1 AS i) p
            ) rows
            ORDER BY n
            """
        )
    vacuum()


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE outbox_event")


def operator_client():
    """A logged-in superuser, through Django's test client (the whole admin stack, no server)."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    User = get_user_model()
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", "", "pw")
    client = Client()
    client.force_login(user)
    return client


def timed(func, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return times


def report(label: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    median = statistics.median(ms)
    print(f"{label:<58} median {median:8.1f} ms   (min {ms[0]:.1f}, max {ms[-1]:.1f}, n={len(ms)})")
