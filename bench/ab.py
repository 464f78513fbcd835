"""A quick A/B of the worker: drain rate (raw floor and ours, 1 worker, ``--rounds`` each, in
turn) and the LISTEN latency of ours (``--rounds`` runs), on the checkout it runs from; it
ends with PASS/MISS for issue 14's drain and latency targets on the medians.

Run it from each checkout being compared, one after the other, and compare the ratios
``ours / floor`` of the same run (the machine's speed changes between runs)::

    .venv-bench/bin/python -m bench.ab --pg postgres://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics

from bench.run import FULL, Bench, drain_targets, latency_targets, verdict


def ready(doc: str, rounds: int) -> tuple[Bench, int]:
    """The A/B scripts' start: their arguments (``--pg``, ``--rounds``, default ``rounds``)
    parsed, and a Bench with its databases made, on a free probe port."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--rounds", type=int, default=rounds)
    args = parser.parse_args()
    bench = Bench(args.pg, FULL)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        bench.port = probe.getsockname()[1]
    bench.setup()
    return bench, args.rounds


def main() -> None:
    bench, rounds = ready(__doc__, 2)
    rates: dict[str, list[float]] = {"floor": [], "ours": []}
    for _ in range(rounds):
        for system in rates:
            rate = bench.attempt(bench.drain, system, 1, bench.sizes["drain_n"])
            if rate is not None:
                rates[system].append(rate)
    latencies: dict[str, list[float]] = {}
    for _ in range(rounds):
        bench.results = {}
        bench.attempt(bench.latency, "ours", True)
        for key, value in bench.results.items():
            latencies.setdefault(key, []).append(value)
    bench.results = {key: statistics.median(values) for key, values in latencies.items()}
    medians = {system: statistics.median(values) for system, values in rates.items() if values}
    report = {
        "drain": rates,
        "ours_over_floor": medians["ours"] / medians["floor"] if len(medians) == 2 else None,
        "latency_ms": latencies,
        "latency_ms_median": bench.results,
    }
    print(json.dumps(report, indent=2))
    # The targets of issue 14 this run measures, on the medians of its rounds.
    figures = {
        **bench.results,
        "drain.ours.1": medians.get("ours", 0),
        "drain.floor.1": medians.get("floor", 0),
    }
    for name, figure, ok in drain_targets(figures) + latency_targets(figures):
        print(f"{verdict(ok)}  {name}: {figure}")


if __name__ == "__main__":
    main()
