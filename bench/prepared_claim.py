"""The claim that finds nothing, planned each time or prepared (PostgreSQL).

Beside ``--done`` done events (written as ``bench/scale.py`` writes them, vacuumed and
analyzed), times ``--claims`` claims that find nothing, in turn, ``--rounds`` times: through a
client-side binding cursor (what Django's psycopg backend uses: planned on every call), the
same after the planner settings that pin the claim's plan (what the worker sends:
``outbox.queries.PIN_PLAN_POSTGRESQL``), a server-side binding cursor without preparing, and
the same prepared (what ``outbox.queries._claim_cursor`` does when the connection's
``prepare_threshold`` allows), and a bare ``SELECT 1`` beside them (the round trip alone).
Each way is timed twice: back to back, and after ``--idle`` seconds of rest each (an idle
worker's claim after a wake-up: the LISTEN latency benchmark sends 50 events a second). Also
prints the planning and execution times ``EXPLAIN ANALYZE`` gives::

    .venv/bin/python -m bench.prepared_claim --pg postgres://postgres@127.0.0.1:5432/bench_prepared
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import psycopg

from bench.scale import Scale, log


def _median_ms(call, count: int, idle: float = 0.0) -> float:
    times = []
    for _ in range(count):
        if idle:
            time.sleep(idle)
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/bench_prepared")
    parser.add_argument("--done", type=int, default=2_000_000)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=0.02, help="seconds of rest before each idle claim")
    args = parser.parse_args()
    scale = Scale(args.pg)
    scale.setup()
    for name in ("BENCH_DATABASE_URL", "DJANGO_SETTINGS_MODULE"):
        os.environ[name] = scale.env[name]
    import django

    django.setup()
    from outbox.queries import _PIN_PLAN_POSTGRESQL, CLAIM_POSTGRESQL

    params = {"token": "t", "lease": 60.0, "limit": 100, "worker": "bench"}
    with scale.connect() as conn:
        log(f"writing {args.done:,} done events")
        scale.fill(conn, args.done)
        client, server = psycopg.ClientCursor(conn), psycopg.Cursor(conn)

        def pinned() -> None:  # what the worker sends: the plan's settings, then the claim
            client.execute(_PIN_PLAN_POSTGRESQL + CLAIM_POSTGRESQL, params)
            client.nextset()
            client.fetchall()

        ways = {
            "select 1": lambda: client.execute("SELECT 1").fetchall(),  # a round trip, no claim
            "client": lambda: client.execute(CLAIM_POSTGRESQL, params).fetchall(),
            "pinned": pinned,
            "server": lambda: server.execute(CLAIM_POSTGRESQL, params, prepare=False).fetchall(),
            "prepared": lambda: server.execute(CLAIM_POSTGRESQL, params, prepare=True).fetchall(),
        }
        rounds: dict[str, list[float]] = {}
        for round_ in range(args.rounds):
            for name, way in ways.items():
                rounds.setdefault(name, []).append(_median_ms(way, args.claims))
                rounds.setdefault(f"{name} after idle", []).append(_median_ms(way, args.claims, args.idle))
            log(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.3f} ms" for k, v in rounds.items()))
        explained = [
            client.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + CLAIM_POSTGRESQL, params).fetchone()[0][0]
            for _ in range(20)
        ]
    print(
        json.dumps(
            {
                "done_rows": args.done,
                "idle_seconds": args.idle,
                "empty_claim_ms": {k: [round(x, 3) for x in v] for k, v in rounds.items()},
                "planning_ms": round(statistics.median(e["Planning Time"] for e in explained), 3),
                "execution_ms": round(statistics.median(e["Execution Time"] for e in explained), 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
