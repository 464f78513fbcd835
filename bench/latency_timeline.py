"""Where the LISTEN latency goes: each event's commit, the worker's wake-up, its claim, and
the receiver's start, timed from inside the worker.

A ``run_outbox`` worker (this module with ``--worker``: the command, its listener's wait, its
claims and ``bench.benchapp``'s ping receiver wrapped with timers) listens on a fresh
database; ``--events`` pings are sent at ``--rate`` per second, each in its own transaction,
as ``make bench``'s latency step sends them. Prints, for each step, how long after the
sender's commit returned it happened (p50, p90, p99 over the events), and how long the claims
took by what they followed::

    .venv-bench/bin/python -m bench.latency_timeline --pg postgres://postgres@127.0.0.1:5432/bench_latency
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scale import ROOT, Scale


def worker(out: str) -> None:
    """Run ``run_outbox`` with its steps timed; write them to ``out`` (JSON) at exit."""
    import django

    django.setup()
    from django.core.management import call_command

    from bench.benchapp import probe
    from outbox import claims, wakeup

    steps: list[list[Any]] = []
    wait, claim = wakeup.Listener.wait, claims.claim

    def timed_wait(self, timeout):  # type: ignore[no-untyped-def]
        woke = wait(self, timeout)
        steps.append(["wake" if woke else "timeout", time.time()])
        return woke

    def timed_claim(*args, **kwargs):  # type: ignore[no-untyped-def]
        began = time.time()
        result = claim(*args, **kwargs)
        steps.append(["claim", began, time.time(), len(result)])
        return result

    wakeup.Listener.wait = timed_wait  # type: ignore[method-assign]
    claims.claim = timed_claim
    probe.hit = lambda n: steps.append(["start", time.time(), n])
    atexit.register(lambda: Path(out).write_text(json.dumps(steps)))
    call_command("run_outbox", verbosity=0)


def _quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    at = [ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e3 for q in (0.5, 0.9, 0.99)]
    return "p50 {:6.2f}  p90 {:6.2f}  p99 {:6.2f} ms".format(*at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432/bench_latency")
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update(
        BENCH_DATABASE_URL=args.pg,
        DJANGO_SETTINGS_MODULE="bench.settings",
        PYTHONPATH=str(ROOT),
        BENCH_PROBE_PORT="9",  # the probe is replaced: nothing is sent
    )
    if args.worker:
        worker(args.worker)
        return
    scale = Scale(args.pg)  # a fresh database, migrated
    scale.env["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    scale.setup()
    import django

    django.setup()
    from django.db import transaction

    from bench.benchapp.models import Item
    from bench.benchapp.signals import ping

    out = Path(tempfile.mkdtemp()) / "steps.json"
    command = [sys.executable, "-m", "bench.latency_timeline", "--pg", args.pg, "--worker", str(out)]
    proc = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ))
    time.sleep(5)  # start-up, then the worker listens
    committed: dict[int, float] = {}
    for n in range(-20, args.events):  # 20 to warm up, not counted
        with transaction.atomic():
            Item(name="ping", quantity=n).save()
            ping.send(sender=Item, n=n)
        committed[n] = time.time()
        time.sleep(1 / args.rate)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    steps = json.loads(out.read_text())
    starts = {step[2]: step[1] for step in steps if step[0] == "start"}
    wakes = [step[1] for step in steps if step[0] == "wake"]
    found = [step for step in steps if step[0] == "claim" and step[3]]
    after: dict[str, list[float]] = {"wake-up": [], "claim sent": [], "claim returned": [], "receiver": []}
    for n in range(args.events):
        if n not in starts:
            continue
        start, commit = starts[n], committed[n]
        claim = max((c for c in found if c[2] <= start), key=lambda c: c[2])
        wake = max((w for w in wakes if w <= claim[1]), default=None)
        if wake is not None and wake >= commit - 0.05:
            after["wake-up"].append(wake - commit)
        after["claim sent"].append(claim[1] - commit)
        after["claim returned"].append(claim[2] - commit)
        after["receiver"].append(start - commit)
    ran = sum(1 for n in starts if n >= 0)
    print(f"{ran} of {args.events} events ran; after the sender's commit returned:")
    for name, values in after.items():
        print(f"  {name:15} {_quantiles(values)}")
    print("claims (median ms), by what came before them:")
    kinds: dict[str, list[float]] = {}
    before = None
    for step in steps:
        if step[0] == "claim":
            kind = f"after {before}, {'found events' if step[3] else 'found none'}"
            kinds.setdefault(kind, []).append(step[2] - step[1])
        if step[0] != "start":
            before = step[0]
    for kind, times in sorted(kinds.items()):
        print(f"  {kind:32} {statistics.median(times) * 1e3:6.2f} ms ({len(times)})")


if __name__ == "__main__":
    main()
