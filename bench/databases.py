"""``make bench-databases``: ours on MariaDB/MySQL beside PostgreSQL, on one machine.

For each database URL: the write path (saves per second of one client whose transaction
saves a row and sends to one deferred receiver, beside the save alone) and the drain rate
(a backlog of ``--events`` events, committed at once, run by ``--workers`` run_outbox
processes polling every 0.2 s, started beforehand, timed from the commit until none is left). Each database is
dropped and migrated afresh. Prints one table; ``--json`` adds the figures as JSON.

    python -m bench.databases --pg postgres://postgres@127.0.0.1:5432/bench_db \\
        --mysql mysql://root@127.0.0.1:3306/bench_db
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = "bench.databases_settings"


def _django(url: str) -> None:
    os.environ["BENCH_DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    import django

    django.setup()


def _recreate(url: str) -> None:
    """Drop and create the database ``url`` names (its server's maintenance database)."""
    base, name = url.rsplit("/", 1)
    if url.startswith("mysql"):
        import dj_database_url
        import MySQLdb

        db = dj_database_url.parse(url)
        conn = MySQLdb.connect(
            host=db["HOST"], port=int(db["PORT"] or 3306), user=db["USER"], password=db["PASSWORD"] or ""
        )
        cursor = conn.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')


def _in_child(url: str, step: str, *args: str) -> dict:
    """Run one step of this module in a fresh process on ``url``; its JSON result."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.databases", "--step", step, "--url", url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_migrate() -> dict:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return {}


def step_write(seconds: float, send: bool) -> dict:
    from django.db import transaction

    from bench.benchapp.models import Item
    from bench.benchapp.signals import work1

    done, deadline = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        with transaction.atomic():
            item = Item.objects.create(name="x")
            if send:
                work1.send(sender=Item, item_id=item.pk)
        done += 1
    return {"per_second": done / (time.perf_counter() - started)}


def step_fill(count: int) -> dict:
    from django.db import transaction

    from bench.benchapp.models import Item
    from bench.benchapp.signals import work1

    with transaction.atomic():
        for start in range(0, count, 1000):
            Item.objects.bulk_create(Item(name="x") for _ in range(min(1000, count - start)))
        for n in range(count):
            work1.send(sender=Item, item_id=n)
    return {}


def _remaining(url: str) -> int:
    """Events not done yet, read with the driver alone (no Django start-up per poll)."""
    import dj_database_url

    db = dj_database_url.parse(url)
    sql = "SELECT count(*) FROM outbox_event WHERE status <> 'done'"
    if url.startswith("mysql"):
        import MySQLdb

        conn = MySQLdb.connect(
            host=db["HOST"],
            port=int(db["PORT"] or 3306),
            user=db["USER"],
            password=db["PASSWORD"] or "",
            database=db["NAME"],
        )
        try:
            cursor = conn.cursor()
            cursor.execute(sql)
            return cursor.fetchone()[0]
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()[0]


def drain(url: str, events: int, workers: int) -> float:
    """Events per second: ``workers`` processes, started and idle, drain a backlog of
    ``events`` committed at once; timed from the end of the commit until none is left."""
    env = {**os.environ, "BENCH_DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": SETTINGS}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "django", "run_outbox", "-v0", "--batch-size", "100"], cwd=ROOT, env=env
        )
        for _ in range(workers)
    ]
    try:
        time.sleep(3)  # started and polling
        _in_child(url, "fill", "--events", str(events))
        started = time.perf_counter()
        while _remaining(url):
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    return events / elapsed


def measure(url: str, events: int, workers: list[int], seconds: float) -> dict:
    _recreate(url)
    _in_child(url, "migrate")
    figures = {
        "save only /s": _in_child(url, "write", "--seconds", str(seconds))["per_second"],
        "save + 1 send /s": _in_child(url, "write", "--seconds", str(seconds), "--send")["per_second"],
    }
    for count in workers:
        figures[f"drain, {count} worker(s) /s"] = drain(url, events, count)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/bench_databases")
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/bench_databases")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each write-path run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--send", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        _django(args.url)
        steps = {
            "migrate": step_migrate,
            "write": lambda: step_write(args.seconds, args.send),
            "fill": lambda: step_fill(args.events),
        }
        print(json.dumps(steps[args.step]()))
        return
    results = {
        "PostgreSQL": measure(args.pg, args.events, args.workers, args.seconds),
        "MariaDB/MySQL": measure(args.mysql, args.events, args.workers, args.seconds),
    }
    rows = list(next(iter(results.values())))
    print(
        f"{'ours, one client / backlog of ' + str(args.events):40} {'PostgreSQL':>12} {'MariaDB/MySQL':>14}"
    )
    for row in rows:
        print(f"{row:40} {results['PostgreSQL'][row]:12.0f} {results['MariaDB/MySQL'][row]:14.0f}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
