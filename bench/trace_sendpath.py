"""The send path with and without OpenTelemetry trace propagation (issue 15).

Each variant runs in a process of its own, round after round in turn, and times each
``work.send(...)`` (one deferred receiver: one INSERT of one row) in one open transaction on
one connection (a commit's fsync would drown the difference):

- ``absent``: ``opentelemetry`` cannot be imported (what a user without the extra runs);
- ``idle``: installed, with an SDK, but no span is active at send time;
- ``active``: a span is active (started once, outside the timed loop, so that only what the
  outbox adds is timed: reading its context, the JSON, and the extra column).

It also times :func:`outbox.tracing.capture` alone. Usage, from the repository root::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/wt_metrics .venv/bin/python bench/trace_sendpath.py

(the database is migrated first; the rows written are deleted at the end of each run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("absent", "idle", "active")


def child(mode: str, sends: int) -> dict:
    if mode == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from outbox import tracing
    from outbox.models import Event
    from tests.testapp.signals import work

    call_command("migrate", "-v0")
    span = None
    if mode != "absent":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
        if mode == "active":
            span = trace.get_tracer("bench").start_as_current_span("request")
            span.__enter__()
    times = []
    with transaction.atomic():  # the sends alone: no commit (an fsync) in what is timed
        for i in range(sends):
            started = time.perf_counter()
            work.send(sender=None, key=f"k{i}")
            times.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(10_000):
        tracing.capture()
    capture = (time.perf_counter() - started) / 10_000
    traced = Event.objects.filter(trace_context__isnull=False).count()
    Event.objects.all().delete()
    return {"median": statistics.median(times), "capture": capture, "traced": traced}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=MODES)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(options.child, options.sends)))
        return
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in range(options.rounds):
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--sends", str(options.sends)],
                cwd=root,
                env={**os.environ, "PYTHONPATH": root},
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(r["median"] for r in results["absent"])
    print(f"{options.rounds} rounds of {options.sends} sends, one row each; median per send")
    for mode in MODES:
        median = statistics.median(r["median"] for r in results[mode])
        capture = statistics.median(r["capture"] for r in results[mode])
        traced = results[mode][-1]["traced"]
        print(
            f"{mode:>7}: {median * 1e6:8.1f} us ({(median - base) * 1e6:+6.1f} us), "
            f"capture() {capture * 1e9:7.0f} ns, rows with a trace context: {traced}"
        )


if __name__ == "__main__":
    main()
