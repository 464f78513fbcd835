"""``make bench-scale``: the claim beside 10,000,000 done events, and pruning them.

Two questions of issue 14 (item 5), on PostgreSQL, on a database of its own:

1. Does the claim cost the same with ``--done`` finished events in the table as with none?
   The claim reads the partial index ``outbox_event_due`` (pending and running rows only),
   so it should: measured as the median time of a claim of ``--batch`` due events and of
   their completion, over ``--rounds`` pools of ``--due`` due events, with no done rows and then with
   ``--done`` (written in bulk, vacuumed and analyzed, as autovacuum would leave them).
2. Does ``manage.py outbox_prune`` delete them without a lock that blocks senders or
   workers, and how fast? While it runs, a sender commits one event at a time (timed: the
   slowest and the 99th percentile beside the same figures with no prune running) and a
   ``run_outbox`` worker drains what it sends (its events reach ``done``).

Not part of ``make bench`` and not in CI: with the default 10,000,000 rows it writes
about 5 GB and takes 10 to 20 minutes. Prints one JSON document; the figures go to
BENCHMARKS.md::

    .venv/bin/python -m bench.scale --pg postgres://postgres@127.0.0.1:5432/bench_scale
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

_COLUMNS = (
    "INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts, available_at, "
    "worker, created_at, last_error, last_traceback, queue, started_at, finished_at) "
)
_PAYLOAD = '\'{"sender":{"__outbox__":"modelclass","label":"benchapp.Item"},"kwargs":{"item_id":1}}\'::jsonb'
# Finished 30 days ago, one second apart (so that (finished_at, id) walks like real history).
_DONE = (
    _COLUMNS + "SELECT 'bench.benchapp.signals.work1', 'bench.benchapp.receivers.noop', "
    f"{_PAYLOAD}, 'done', 1, 8, now() - interval '30 days', '', now() - interval '30 days', '', '', "
    "'default', now() - interval '30 days', now() - interval '30 days' + g * interval '1 millisecond' "
    "FROM generate_series(%s, %s) AS g"
)
_DUE = (
    _COLUMNS + "SELECT 'bench.benchapp.signals.work1', 'bench.benchapp.receivers.noop', "
    f"{_PAYLOAD}, 'pending', 0, 8, statement_timestamp(), '', statement_timestamp(), '', '', "
    "'default', NULL, NULL FROM generate_series(1, %s)"
)
_SEND = (
    _COLUMNS + "VALUES ('bench.benchapp.signals.work1', 'bench.benchapp.receivers.noop', "
    f"{_PAYLOAD}, 'pending', 0, 8, statement_timestamp(), '', statement_timestamp(), '', '', "
    "'default', NULL, NULL)"
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Scale:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.server, _, self.name = self.url.rpartition("/")
        self.env = {
            **os.environ,
            "BENCH_DATABASE_URL": self.url,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "bench.databases_settings",
        }

    def setup(self) -> None:
        with psycopg.connect(f"{self.server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.name}"')
        subprocess.run([PY, "-m", "django", "migrate", "-v0"], env=self.env, cwd=ROOT, check=True)

    def connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.url, autocommit=True)
        conn.execute("SET statement_timeout = '60min'")
        return conn

    def claims(self, conn: psycopg.Connection, due: int, batch: int, rounds: int) -> dict:
        """Median ms of a claim of ``batch`` due events and of their completion, over
        ``rounds`` pools of ``due`` events (each claimed until it is empty, then deleted),
        and of a claim that finds nothing."""
        from outbox.queries import CLAIM_POSTGRESQL, COMPLETE_POSTGRESQL

        cursor = psycopg.ClientCursor(conn)
        params = {"token": "t", "lease": 60.0, "limit": batch, "worker": "bench"}
        claim_ms, complete_ms = [], []
        for _ in range(rounds):
            conn.execute(_DUE, [due])
            conn.execute("VACUUM ANALYZE outbox_event")
            conn.execute("CHECKPOINT")
            while True:
                began = time.perf_counter()
                cursor.execute(CLAIM_POSTGRESQL, params)
                ids = [row[0] for row in cursor.fetchall()]
                claimed = time.perf_counter()
                if not ids:
                    break
                cursor.execute(COMPLETE_POSTGRESQL, [ids, [0.0] * len(ids), [0.0] * len(ids), "t"])
                claim_ms.append((claimed - began) * 1000)
                complete_ms.append((time.perf_counter() - claimed) * 1000)
            # The pool's rows are done now, beside the others: out of the next measurement.
            conn.execute("DELETE FROM outbox_event WHERE worker = 'bench'")
        conn.execute("VACUUM ANALYZE outbox_event")
        empty = []
        for _ in range(50):
            began = time.perf_counter()
            cursor.execute(CLAIM_POSTGRESQL, params)
            cursor.fetchall()
            empty.append((time.perf_counter() - began) * 1000)
        cursor.execute("EXPLAIN " + CLAIM_POSTGRESQL, params)
        plan = [row[0] for row in cursor.fetchall()]
        return {
            "claims": len(claim_ms),
            "claim_ms": round(statistics.median(claim_ms), 3),
            "complete_ms": round(statistics.median(complete_ms), 3),
            "empty_claim_ms": round(statistics.median(empty), 3),
            "plan": plan,
        }

    def fill(self, conn: psycopg.Connection, done: int) -> float:
        began = time.time()
        chunk = 1_000_000
        for start in range(1, done + 1, chunk):
            conn.execute(_DONE, [start, min(start + chunk - 1, done)])
            log(f"  {min(start + chunk - 1, done):,} done rows written")
        conn.execute("VACUUM ANALYZE outbox_event")
        conn.execute("CHECKPOINT")
        return time.time() - began

    def send_latencies(self, seconds: float | None, stop: threading.Event | None = None) -> list[float]:
        """Commit one event at a time (autocommit INSERT, a sender's whole transaction) for
        ``seconds`` or until ``stop`` is set; return each one's milliseconds."""
        times = []
        deadline = None if seconds is None else time.monotonic() + seconds
        with self.connect() as conn:
            while not (stop is not None and stop.is_set()):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                began = time.perf_counter()
                conn.execute(_SEND)
                times.append((time.perf_counter() - began) * 1000)
                time.sleep(0.005)
        return times

    def prune(self, conn: psycopg.Connection, done: int, batch_size: int) -> dict:
        worker = subprocess.Popen(
            [PY, "-m", "django", "run_outbox", "-v0"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(3)  # the worker is up
            quiet = self.send_latencies(10)
            stop = threading.Event()
            during: list[float] = []
            sender = threading.Thread(target=lambda: during.extend(self.send_latencies(None, stop)))
            sender.start()
            began = time.time()
            command = [PY, "-m", "django", "outbox_prune", "--older-than", "7d"]
            command += ["--batch-size", str(batch_size)]
            result = subprocess.run(
                command, env=self.env, cwd=ROOT, check=True, capture_output=True, text=True
            )
            elapsed = time.time() - began
            stop.set()
            sender.join()
            deadline = time.time() + 60
            while conn.execute("SELECT count(*) FROM outbox_event WHERE status <> 'done'").fetchone()[0]:
                if time.time() > deadline:
                    raise RuntimeError("the worker did not drain what was sent during the prune")
                time.sleep(0.2)
        finally:
            worker.terminate()
            worker.wait()
        left = conn.execute("SELECT count(*) FROM outbox_event WHERE finished_at < now() - interval '7 days'")
        sent = len(quiet) + len(during)
        return {
            "output": result.stdout.strip(),
            "deleted": done,
            "left": left.fetchone()[0],
            "seconds": round(elapsed, 1),
            "rows_per_second": round(done / elapsed),
            "batch_size": batch_size,
            "sends_drained": sent,
            "send_ms_quiet": _summary(quiet),
            "send_ms_during_prune": _summary(during),
        }


def _summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {
        "count": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[int(len(ordered) * 0.99) - 1], 2),
        "max": round(ordered[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/bench_scale")
    parser.add_argument("--done", type=int, default=10_000_000, help="done events in the table")
    parser.add_argument("--due", type=int, default=20_000, help="due events claimed in each case")
    parser.add_argument("--rounds", type=int, default=3, help="pools of due events in each case")
    parser.add_argument("--batch", type=int, default=100, help="events per claim (BATCH_SIZE)")
    parser.add_argument("--prune-batch", type=int, default=1000, help="rows per DELETE (PRUNE_BATCH_SIZE)")
    args = parser.parse_args()
    scale = Scale(args.pg)
    scale.setup()
    for name in ("BENCH_DATABASE_URL", "DJANGO_SETTINGS_MODULE"):
        os.environ[name] = scale.env[name]
    import django

    django.setup()
    with scale.connect() as conn:
        log("claims with no done events")
        empty = scale.claims(conn, args.due, args.batch, args.rounds)
        log(f"  claim {empty['claim_ms']} ms, complete {empty['complete_ms']} ms")
        log(f"writing {args.done:,} done events")
        built = scale.fill(conn, args.done)
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('outbox_event'))").fetchone()[0]
        log(f"claims with {args.done:,} done events ({size})")
        full = scale.claims(conn, args.due, args.batch, args.rounds)
        log(f"  claim {full['claim_ms']} ms, complete {full['complete_ms']} ms")
        log("pruning them while a sender sends and a worker drains")
        pruned = scale.prune(conn, args.done, args.prune_batch)
        log(f"  {pruned['rows_per_second']:,} rows/s; sends {pruned['send_ms_during_prune']}")
    print(
        json.dumps(
            {
                "done_rows": args.done,
                "table_size": size,
                "fill_seconds": round(built),
                "claim_without_done": empty,
                "claim_with_done": full,
                "claim_ratio": round(full["claim_ms"] / empty["claim_ms"], 2),
                "complete_ratio": round(full["complete_ms"] / empty["complete_ms"], 2),
                "prune": pruned,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
