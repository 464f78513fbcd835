"""One worker's drain, timed from inside: when each claim and each batch began and ended.

``--events`` no-op events (``bench.benchapp``'s, as ``make bench`` drains them) are committed
at once into a fresh database, then ``outbox.Worker`` (claiming ahead, as ``run_outbox`` runs
it) drains them in this process, its claims (``outbox.queries.claim_after``) and batches
(the dispatcher's ``dispatch``) wrapped with timers. Prints the rate, the medians of both,
and a stretch of the timeline from the middle of the drain, which shows whether the claim
made ahead overlaps the batch it waits behind::

    .venv-bench/bin/python -m bench.drain_timeline --pg postgres://postgres@127.0.0.1:5432/bench_timeline
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import psycopg

from bench.scale import ROOT, Scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/bench_timeline")
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    os.environ.update(
        BENCH_DATABASE_URL=args.pg, DJANGO_SETTINGS_MODULE="bench.settings", PYTHONPATH=str(ROOT)
    )
    scale = Scale(args.pg)  # a fresh database, migrated
    scale.env["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    scale.setup()
    fill = [sys.executable, "-m", "bench.child", "fill", "ours", "--count", str(args.events)]
    subprocess.run(fill, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, cwd=ROOT)
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE outbox_event")

    import django

    django.setup()
    from outbox import queries
    from outbox.worker import Worker

    claims: list[tuple[float, float, int]] = []  # (began, ended, rows)
    batches: list[tuple[float, float]] = []
    claim_after = queries.claim_after

    def timed_claim(*a, **k):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        result = claim_after(*a, **k)
        claims.append((began, time.perf_counter(), len(result[1])))
        return result

    queries.claim_after = timed_claim
    worker = Worker(listen=False)
    dispatch = worker.dispatcher.dispatch

    def timed_dispatch(claim):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        try:
            return dispatch(claim)
        finally:
            batches.append((began, time.perf_counter()))

    worker.dispatcher.dispatch = timed_dispatch  # type: ignore[method-assign]

    def stop_when_drained() -> None:
        while sum(rows for *_, rows in claims) < args.events:
            time.sleep(0.02)
        worker.stop()

    threading.Thread(target=stop_when_drained, daemon=True).start()
    began, cpu = time.perf_counter(), time.process_time()
    worker.run()
    elapsed = time.perf_counter() - began
    full = [ended - start for start, ended, rows in claims if rows == worker.batch_size]
    print(
        f"{args.events / elapsed:,.0f} events/s; CPU {1e6 * (time.process_time() - cpu) / args.events:.1f} "
        f"us per event (all threads); worker claiming ahead: {worker.claim_ahead}"
    )
    print(f"claim of {worker.batch_size}: median {statistics.median(full) * 1e3:.2f} ms ({len(full)} claims)")
    print(
        f"batch: median {statistics.median(e - s for s, e in batches) * 1e3:.2f} ms ({len(batches)} batches)"
    )
    spans = sorted([(s, e, "claim") for s, e, _ in claims] + [(s, e, "batch") for s, e in batches])
    middle = len(spans) // 2
    zero = spans[middle][0]
    for start, ended, what in spans[middle : middle + 12]:
        print(f"  {what:5} {(start - zero) * 1e3:7.2f} -> {(ended - zero) * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
