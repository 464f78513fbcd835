"""A/B of claiming ahead (OUTBOX["WORKER_CLAIM_AHEAD"]): one worker's drain rate with it on
and off, beside the raw psycopg floor, in turn, ``rounds`` times each, in one run (the
machine's speed moves between runs: compare the ratios to the floor of the same run)::

    .venv-bench/bin/python -m bench.claim_ahead --pg postgres://postgres@127.0.0.1:5432/bench --rounds 6
"""

from __future__ import annotations

import os
import statistics

from bench.ab import ready


def main() -> None:
    bench, rounds = ready(__doc__, 5)
    rates: dict[str, list[float]] = {"floor": [], "ahead": [], "off": []}
    for _ in range(rounds):
        for name, values in rates.items():
            os.environ["BENCH_CLAIM_AHEAD"] = "0" if name == "off" else "1"  # read by bench.settings
            rate = bench.attempt(
                bench.drain, "floor" if name == "floor" else "ours", 1, bench.sizes["drain_n"]
            )
            if rate is not None:
                values.append(rate)
    floor = statistics.median(rates["floor"])
    for name, values in rates.items():
        median = statistics.median(values)
        runs = [round(v) for v in values]
        print(f"{name:6} median {median:8,.0f}/s  {median / floor:.3f}x floor  runs {runs}")


if __name__ == "__main__":
    main()
