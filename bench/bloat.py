"""``make bench-bloat``: the claim and the drain with finished rows that VACUUM cannot remove.

A queue table's classic failure: a transaction somewhere (a report, an idle session, a
replica's ``hot_standby_feedback``) holds the xmin horizon back, so the dead row versions
of every finished event stay, and every claim steps over their entries in the due index.
This script holds a ``REPEATABLE READ`` snapshot open in another session, writes ``--rows``
events through their whole life (pending, running, done: two dead index entries each, as a
worker leaves them), then measures, with the snapshot still held:

- the claim when nothing is due (median of ``--claims`` runs), and its plan;
- one ``run_outbox`` worker draining ``--events`` no-op events committed at once;

with fresh statistics (ANALYZE after the rows finished) and stale ones (analyzed while the
table was empty), beside the same steps on an empty table. Not part of ``make bench`` (the
1,000,000-row case takes minutes). Prints one JSON document; the figures go to BENCHMARKS.md::

    .venv-bench/bin/python -m bench.bloat --pg postgres://postgres@127.0.0.1:5432/bench --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import django
import psycopg

from bench.run import FULL, Bench, log

_INSERT = (
    "INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts, available_at, "
    "worker, created_at, last_error, last_traceback, queue) "
    "SELECT 'bench.benchapp.signals.work1', 'bench.benchapp.receivers.noop', "
    '\'{"sender":{"__outbox__":"modelclass","label":"benchapp.Item"},"kwargs":{"item_id":1}}\'::jsonb, '
    "'pending', 0, 8, statement_timestamp(), '', statement_timestamp(), '', '', 'default' "
    "FROM generate_series(1, %s)"
)


class Bloat(Bench):
    def url(self, system: str) -> str:
        return f"{self.server}/{self.prefix}_bloat"

    def setup(self) -> None:
        import subprocess

        from bench.run import PY, ROOT

        self.tasks_table = ""  # Bench's queries name every system's table
        with psycopg.connect(f"{self.server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.prefix}_bloat" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.prefix}_bloat"')
        subprocess.run([PY, "-m", "django", "migrate", "-v0"], env=self.env("ours"), cwd=ROOT, check=True)

    def finish_rows(self, conn: psycopg.Connection, rows: int) -> None:
        """``rows`` events through their whole life, in chunks (each its own transaction)."""
        chunk = 100_000
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            conn.execute(_INSERT, [n])
            conn.execute(
                "UPDATE outbox_event SET status = 'running', lease_token = 't', "
                "available_at = statement_timestamp() - interval '1 second' WHERE status = 'pending'"
            )
            conn.execute(
                "UPDATE outbox_event SET status = 'done', finished_at = statement_timestamp(), "
                "lease_token = NULL WHERE status = 'running'"
            )

    def empty_claims(self, conn: psycopg.Connection, count: int) -> tuple[float, list[str]]:
        from outbox.queries import CLAIM_POSTGRESQL  # after django.setup(): see main()

        cursor = psycopg.ClientCursor(conn)
        params = {"token": "t", "lease": 60.0, "limit": 100, "worker": "bench"}
        cursor.execute("EXPLAIN " + CLAIM_POSTGRESQL, params)
        plan = [row[0] for row in cursor.fetchall()]
        times = []
        for _ in range(count):
            began = time.perf_counter()
            cursor.execute(CLAIM_POSTGRESQL, params)
            cursor.fetchall()
            times.append((time.perf_counter() - began) * 1000)
        return statistics.median(times), plan

    def drain_now(self, conn: psycopg.Connection, events: int) -> float:
        procs = self.start_workers("ours", 1)
        try:
            self.wait_idle(procs)
            began = time.time()
            conn.execute(_INSERT, [events])
            while conn.execute(self.pending_query("ours")).fetchone()[0]:
                if time.time() - began > 300:
                    break
                time.sleep(0.01)
            elapsed = time.time() - began
            left = self.remaining("ours")
        finally:
            self.stop_workers(procs)
        return (events - left) / elapsed

    def case(self, rows: int, stats: str, events: int, claims: int) -> dict:
        with psycopg.connect(self.url("ours"), autocommit=True) as conn:
            conn.execute("SET statement_timeout = '30min'")
            conn.execute("TRUNCATE outbox_event")
            conn.execute("VACUUM ANALYZE outbox_event")
            with psycopg.connect(self.url("ours")) as holder:
                holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                holder.execute("SELECT count(*) FROM outbox_event").fetchone()  # the snapshot is taken
                began = time.time()
                self.finish_rows(conn, rows)
                built = time.time() - began
                if stats == "fresh":
                    conn.execute("ANALYZE outbox_event")
                self.checkpoint("ours")
                dead = conn.execute(
                    "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox_event'"
                ).fetchone()[0]
                claim_ms, plan = self.empty_claims(conn, claims)
                rate = self.drain_now(conn, events)
                after_ms, _ = self.empty_claims(conn, claims)
                holder.rollback()
        result = {
            "rows": rows,
            "stats": stats,
            "dead_tuples": dead,
            "build_seconds": round(built, 1),
            "empty_claim_ms": round(claim_ms, 2),
            "drain_per_second": round(rate),
            "empty_claim_after_drain_ms": round(after_ms, 2),
            "plan": plan,
        }
        log(
            f"bloat {rows:,} rows, {stats} stats: empty claim {claim_ms:.2f} ms, drain {rate:,.0f}/s, "
            f"{dead:,} dead tuples"
        )
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished rows left unvacuumable")
    parser.add_argument("--events", type=int, default=20_000, help="events drained in each case")
    parser.add_argument("--claims", type=int, default=20, help="empty claims timed in each case")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    # The claim's statement takes the table's name from the model.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    django.setup()
    bench = Bloat(args.pg, FULL)
    bench.port = 0
    bench.setup()
    results = []
    for _ in range(args.runs):
        for rows, stats in ((0, "fresh"), (args.rows, "fresh"), (args.rows, "stale")):
            results.append(bench.attempt(bench.case, rows, stats, args.events, args.claims))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
