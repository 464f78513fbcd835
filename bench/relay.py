"""Relay throughput: events/s handed to django-q2, and end to end through a 4-worker cluster,
beside in-process dispatch. Run with ``make bench-relay`` (or ``python bench/relay.py -h``).

Every figure is measured the same way: the processes are started and warmed up (a small
batch run end to end), then N events are committed in one transaction and the clock runs
from the commit until the last event reaches the state measured. The receiver is the test
app's ``record``: one INSERT per call, like a receiver that writes an audit row.

- ``in-process x1`` / ``x4``: 1 or 4 ``run_outbox`` processes running the receivers.
- ``relay only (broker)``: one ``run_outbox`` relaying to django-q2, no cluster: until
  every event is handed over (``running``), i.e. the relay's own rate.
- ``relay + 4-worker cluster (broker)``: the same relay and ``qcluster`` with 4 workers,
  until every event is ``done``.

Uses its own PostgreSQL database (created if missing, ``BENCH_DATABASE_URL``) and Redis
database 8 (``BENCH_REDIS_URL``), where it deletes only its cluster's keys between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/outbox_bench_relay")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
RELAY = "outbox.dispatch.django_q2"

os.environ["DATABASE_URL"] = DATABASE_URL
# Persistent connections, as in production: django-q2 closes obsolete connections before
# every task, so with Django's default of 0 each task would open a new one.
os.environ.setdefault("OUTBOX_TEST_CONN_MAX_AGE", "60")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
sys.path.insert(0, str(ROOT))


def create_database() -> None:
    import psycopg

    name = DATABASE_URL.rsplit("/", 1)[1]
    with psycopg.connect(DATABASE_URL.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v0", "--settings=tests.settings"], cwd=ROOT, check=True
    )


def child_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "PYTHONPATH": str(ROOT),
        "OUTBOX_TEST_REDIS_URL": REDIS_URL,
        "OUTBOX_TEST_Q2_QUEUE_LIMIT": "16",
        **extra,
    }


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "django", *args, "--settings=tests.settings"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def reset(redis_client) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_event, testapp_call, django_q_ormq, django_q_task")
    # The cluster's keys only (Q_CLUSTER["name"] of tests/settings.py), never FLUSHDB.
    keys = list(redis_client.scan_iter(match="django_q:outbox-tests:*", count=1000))
    if keys:
        redis_client.delete(*keys)


def send(n: int, prefix: str) -> None:
    from django.db import transaction

    from tests.testapp.signals import work

    with transaction.atomic():
        for i in range(n):
            work.send(sender=None, key=f"{prefix}{i}")


def wait_until(status: str, n: int, timeout: float = 600) -> float:
    """Seconds from now until ``n`` events have ``status``."""
    from outbox.models import Event

    started = time.perf_counter()
    while Event.objects.filter(status=status).count() < n:
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"timed out waiting for {n} {status} events")
        time.sleep(0.02)
    return time.perf_counter() - started


def measure(mode: str, n: int, redis_client) -> float:
    """One run of ``mode``; a run cut by a database restart (another job on a shared
    machine) is run again rather than counted."""
    from django.db import OperationalError, connection

    for _ in range(3):
        try:
            return measure_once(mode, n, redis_client)
        except OperationalError as exc:
            print(f"  ({mode}: the database went away ({exc}); running again)", flush=True)
            connection.close()
            time.sleep(5)
    raise SystemExit(f"{mode}: the database kept going away")


def measure_once(mode: str, n: int, redis_client) -> float:
    """One run of ``mode``: events per second from the commit of N events."""
    relay_env = {"OUTBOX_TEST_DISPATCHER": RELAY, "OUTBOX_TEST_RELAY_QUEUE_LIMIT": "100000"}
    processes: list[subprocess.Popen] = []
    reset(redis_client)
    try:
        if mode.startswith("in-process"):
            count = int(mode.rsplit("x", 1)[1])
            processes = [start(["run_outbox", "--poll-interval", "0.2"], child_env()) for _ in range(count)]
            target = "done"
        else:
            broker = "redis" if "redis" in mode else "orm"
            env = child_env(OUTBOX_TEST_Q2_BROKER=broker, OUTBOX_TEST_Q2_WORKERS="4", **relay_env)
            processes = [start(["run_outbox", "--poll-interval", "0.2"], env)]
            target = "running" if mode.startswith("relay only") else "done"
            if target == "done":
                processes.append(start(["qcluster"], env))
        # Warm-up: every process started and has run (or relayed) events end to end.
        send(20, "warm")
        wait_until(target, 20, timeout=120)
        reset(redis_client)
        send(n, "k")
        seconds = wait_until(target, n)
        return n / seconds
    finally:
        stop(processes)


MODES = [
    "in-process x1",
    "in-process x4",
    "relay only (redis)",
    "relay only (orm)",
    "relay + 4-worker cluster (redis)",
    "relay + 4-worker cluster (orm)",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000, help="events per run (default 3000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode; the median is reported")
    parser.add_argument("--mode", action="append", choices=MODES, help="only these modes")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    create_database()
    import django

    django.setup()
    import redis

    redis_client = redis.Redis.from_url(REDIS_URL)
    results = {}
    print(f"{args.events} events per run, {args.runs} runs per mode, receiver: one INSERT per event")
    for mode in args.mode or MODES:
        runs = [measure(mode, args.events, redis_client) for _ in range(args.runs)]
        results[mode] = {"median": statistics.median(runs), "runs": runs}
        shown = ", ".join(f"{r:.0f}" for r in runs)
        print(f"{mode:34} median {statistics.median(runs):7.0f} events/s   (runs: {shown})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"events": args.events, "results": results}, indent=2))


if __name__ == "__main__":
    main()
