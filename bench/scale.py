"""``make bench-scale``: the claim beside 10,000,000 done events, and pruning them.

Two questions of issue 14 (item 5), on PostgreSQL, on a database of its own:

1. Does the claim cost the same with ``--done`` finished events in the table as with none?
   The claim reads the partial index ``outbox_event_due`` (pending and running rows only),
   so it should: two databases, one with ``--done`` done events (written in bulk, vacuumed
   and analyzed, as autovacuum would leave them) and one without, each given ``--rounds``
   pools of ``--due`` due events in turn; the median claim of ``--batch`` events, its
   completion, and a claim that finds nothing, on each.
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
    "FROM generate_series(%s::int, %s::int) AS g"
)
_DUE = (
    _COLUMNS + "SELECT 'bench.benchapp.signals.work1', 'bench.benchapp.receivers.noop', "
    f"{_PAYLOAD}, 'pending', 0, 8, statement_timestamp(), '', statement_timestamp(), '', '', "
    "'default', NULL, NULL FROM generate_series(1, %s::int)"
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

    def claim_pool(self, conn: psycopg.Connection, due: int, batch: int) -> tuple[list[float], list[float]]:
        """Claim a pool of ``due`` fresh due events ``batch`` at a time, completing each
        batch, until none is left; return the milliseconds of each claim and completion.
        The pool's rows are deleted after (done, they would join the measured ones)."""
        from outbox.queries import CLAIM_POSTGRESQL, COMPLETE_POSTGRESQL

        conn.execute(_DUE, [due])
        conn.execute("VACUUM ANALYZE outbox_event")
        conn.execute("CHECKPOINT")
        cursor = psycopg.ClientCursor(conn)
        params = {"token": "t", "lease": 60.0, "limit": batch, "worker": "bench"}
        claim_ms, complete_ms = [], []
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
        conn.execute("DELETE FROM outbox_event WHERE worker = 'bench'")
        conn.execute("VACUUM ANALYZE outbox_event")
        return claim_ms, complete_ms

    def empty_claim(self, conn: psycopg.Connection, batch: int) -> tuple[float, list[str]]:
        """Median ms of 50 claims that find nothing, and the claim's plan."""
        from outbox.queries import CLAIM_POSTGRESQL

        cursor = psycopg.ClientCursor(conn)
        params = {"token": "t", "lease": 60.0, "limit": batch, "worker": "bench"}
        times = []
        for _ in range(50):
            began = time.perf_counter()
            cursor.execute(CLAIM_POSTGRESQL, params)
            cursor.fetchall()
            times.append((time.perf_counter() - began) * 1000)
        cursor.execute("EXPLAIN " + CLAIM_POSTGRESQL, params)
        return statistics.median(times), [row[0] for row in cursor.fetchall()]

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

    def lock_waits(self, stop: threading.Event) -> list[str]:
        """Every 10 ms until ``stop``: the sessions of this database waiting for a lock."""
        seen = []
        with self.connect() as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "SELECT wait_event, left(query, 60) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchall()
                seen.extend(f"{event}: {query}" for event, query in rows)
                time.sleep(0.01)
        return seen

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
            waits: list[str] = []
            sender = threading.Thread(target=lambda: during.extend(self.send_latencies(None, stop)))
            watcher = threading.Thread(target=lambda: waits.extend(self.lock_waits(stop)))
            sender.start()
            watcher.start()
            began = time.time()
            command = [PY, "-m", "django", "outbox_prune", "--older-than", "7d"]
            command += ["--batch-size", str(batch_size)]
            result = subprocess.run(
                command, env=self.env, cwd=ROOT, check=True, capture_output=True, text=True
            )
            elapsed = time.time() - began
            stop.set()
            sender.join()
            watcher.join()
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
            # Sessions of this database seen waiting for a heavyweight lock (pg_locks), sampled
            # every 10 ms while the prune ran: what a blocking lock would show.
            "lock_waits_seen": len(waits),
            "lock_waits": sorted(set(waits))[:10],
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
    parser.add_argument("--rounds", type=int, default=6, help="pools of due events per case, in turn")
    parser.add_argument("--batch", type=int, default=100, help="events per claim (BATCH_SIZE)")
    parser.add_argument("--prune-batch", type=int, default=1000, help="rows per DELETE (PRUNE_BATCH_SIZE)")
    args = parser.parse_args()
    full, empty = Scale(args.pg), Scale(args.pg + "_empty")
    full.setup()
    empty.setup()
    for name in ("BENCH_DATABASE_URL", "DJANGO_SETTINGS_MODULE"):
        os.environ[name] = full.env[name]
    import django

    django.setup()
    with full.connect() as conn, empty.connect() as empty_conn:
        log(f"writing {args.done:,} done events")
        built = full.fill(conn, args.done)
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('outbox_event'))").fetchone()[0]
        # The same claims on the two databases in turn, round after round, so that both
        # see the same machine; the ratio is of the medians over every claim of each.
        times: dict[str, tuple[list[float], list[float]]] = {"none": ([], []), "done": ([], [])}
        for round_ in range(args.rounds):
            order = [("none", empty, empty_conn), ("done", full, conn)]
            for case, scale, connection in order if round_ % 2 == 0 else order[::-1]:
                claims, completions = scale.claim_pool(connection, args.due, args.batch)
                times[case][0].extend(claims)
                times[case][1].extend(completions)
                log(f"  round {round_ + 1}, {case}: claim {statistics.median(claims):.3f} ms")
        figures = {}
        for case, scale, connection in (("none", empty, empty_conn), ("done", full, conn)):
            empty_ms, plan = scale.empty_claim(connection, args.batch)
            figures[case] = {
                "claims": len(times[case][0]),
                "claim_ms": round(statistics.median(times[case][0]), 3),
                "complete_ms": round(statistics.median(times[case][1]), 3),
                "empty_claim_ms": round(empty_ms, 3),
                "plan": plan,
            }
        for case in ("none", "done"):
            shown = {key: value for key, value in figures[case].items() if key != "plan"}
            log(f"  {case}: {shown}")
        log("pruning them while a sender sends and a worker drains")
        pruned = full.prune(conn, args.done, args.prune_batch)
        log(f"  {pruned['rows_per_second']:,} rows/s; sends {pruned['send_ms_during_prune']}")
    print(
        json.dumps(
            {
                "done_rows": args.done,
                "table_size": size,
                "fill_seconds": round(built),
                "claim_without_done": figures["none"],
                "claim_with_done": figures["done"],
                "claim_ratio": round(figures["done"]["claim_ms"] / figures["none"]["claim_ms"], 2),
                "complete_ratio": round(figures["done"]["complete_ms"] / figures["none"]["complete_ms"], 2),
                "empty_claim_ratio": round(
                    figures["done"]["empty_claim_ms"] / figures["none"]["empty_claim_ms"], 2
                ),
                "prune": pruned,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
