"""A quick A/B of the worker: drain rate (raw floor and ours, 1 worker, twice each, in turn)
and the LISTEN latency of ours, on the checkout it runs from.

Run it from each checkout being compared, one after the other, and compare the ratios
``ours / floor`` of the same run (the machine's speed changes between runs)::

    .venv-bench/bin/python -m bench.ab --pg postgres://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics

from bench.run import FULL, Bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    bench = Bench(args.pg, FULL)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        bench.port = probe.getsockname()[1]
    bench.setup()
    rates: dict[str, list[float]] = {"floor": [], "ours": []}
    for _ in range(args.rounds):
        for system in rates:
            rate = bench.attempt(bench.drain, system, 1, bench.sizes["drain_n"])
            if rate is not None:
                rates[system].append(rate)
    bench.attempt(bench.latency, "ours", True)
    medians = {system: statistics.median(values) for system, values in rates.items() if values}
    report = {
        "drain": rates,
        "ours_over_floor": medians["ours"] / medians["floor"] if len(medians) == 2 else None,
        "latency_ms": {k: v for k, v in bench.results.items() if k.startswith("latency.")},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
