"""Scale facts: worker memory over many events.

``python -m stress.scale --events 200000`` (``make chaos`` runs it) drains that many events
through one ``run_outbox`` process and prints its resident memory once it is warm (10% of
the events done) and at the end. ``tests/test_scale.py`` runs it at a size that fits in CI.

Events are written with plain INSERTs (the send path has its own tests); each refers to a
model instance, so the worker decodes and fetches in bulk as it does for real signals.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
APP = "tests.testapp.faults"


@dataclass
class Memory:
    """Resident memory of the worker process, in bytes."""

    events: int
    warm_rss: int
    end_rss: int
    peak_rss: int
    seconds: float

    @property
    def growth(self) -> int:
        return self.end_rss - self.warm_rss

    def __str__(self) -> str:
        return (
            f"events {self.events}: RSS {self.warm_rss / MiB:.1f} MiB once warm (10% done), "
            f"{self.end_rss / MiB:.1f} MiB at the end, peak {self.peak_rss / MiB:.1f} MiB, "
            f"growth {self.growth / MiB:+.1f} MiB, {self.seconds:.1f} s "
            f"({self.events / self.seconds:.0f} events/s)"
        )


def insert_events(count: int, chunk: int = 10_000) -> None:
    """Write ``count`` due events for ``tests.testapp.faults.does_nothing``."""
    from django.db import connection, transaction
    from django.utils import timezone

    from tests.testapp.models import Person

    people = [Person.objects.create(name=f"p{i}").pk for i in range(10)]
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    sql = (
        f"INSERT INTO outbox_event ({connection.ops.quote_name('signal')}, receiver, payload, status, "
        "attempts, max_attempts, "
        "available_at, worker, created_at, last_error, last_traceback) "
        "VALUES (%s, %s, %s, 'pending', 0, 8, %s, '', %s, '', '')"
    )
    for start in range(0, count, chunk):
        rows = []
        for i in range(start, min(count, start + chunk)):
            who = {"__outbox__": "model", "label": "testapp.Person", "db": "default", "pk": people[i % 10]}
            payload = json.dumps({"sender": None, "kwargs": {"n": i, "who": who}})
            rows.append(
                ["tests.testapp.faults.nothing", "tests.testapp.faults.does_nothing", payload, now, now]
            )
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, rows)


def measure(events: int, env: dict[str, str], batch_size: int = 100) -> Memory:
    """Drain ``events`` events with one worker process and sample its memory."""
    import psutil

    from outbox.models import Event

    insert_events(events)
    active = Event.objects.filter(status__in=["pending", "running"])
    command = [sys.executable, "-m", "django", "run_outbox", "--settings=tests.settings"]
    command += ["--batch-size", str(batch_size), "--poll-interval", "0.2", "-v", "0"]
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    try:
        process = psutil.Process(proc.pid)
        warm = peak = 0
        while True:
            left = active.count()
            rss = process.memory_info().rss
            peak = max(peak, rss)
            if not warm and left <= events * 0.9:
                warm = rss
            if not left:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {proc.returncode}")
            time.sleep(0.1)
        seconds = time.monotonic() - started
        end = process.memory_info().rss
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return Memory(events, warm, end, max(peak, end), seconds)


def main(argv: list[str] | None = None) -> int:
    from stress.chaos import DEFAULT_URL, _setup

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--database-url", default=os.environ.get("CHAOS_DATABASE_URL", DEFAULT_URL))
    options = parser.parse_args(argv)
    _setup(options.database_url)
    from outbox.models import Event

    Event.objects.all().delete()
    env = {"DATABASE_URL": options.database_url, "PYTHONPATH": str(ROOT)}
    print(measure(options.events, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
