"""``python -m bench.iobound.enqueue SYSTEM MODE COUNT``: one transaction of COUNT jobs.

Each system's own hand-off, inside ``transaction.atomic()`` as a Django view would call it.
Prints "ready" with the transaction still open, commits on a line from stdin, then prints
one JSON line: ``commit_at``, the time just before the commit (the workers cannot see a job
before it; Celery's publishes, which ``delay_on_commit`` runs after it, count in the rate).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.iobound.settings")

import django  # noqa: E402

django.setup()

from django.db import transaction  # noqa: E402


def handoff(system: str, mode: str, count: int) -> None:
    """Write ``count`` jobs the way a user of ``system`` would, in the open transaction."""
    if system == "ours":
        from bench.iobound.ours import wait_async, wait_sync

        signal = wait_async if mode == "async" else wait_sync
        for n in range(count):
            signal.send(sender=None, n=n)
    elif system.startswith("celery"):
        from bench.iobound.celery_app import sleep_sync

        for n in range(count):
            sleep_sync.delay_on_commit(n)
    elif system == "procrastinate":
        from bench.iobound.tasks import sleep_async, sleep_sync

        task = sleep_async if mode == "async" else sleep_sync
        task.batch_defer(*({"n": n} for n in range(count)))
    elif system == "q2":
        from django_q.tasks import async_task

        for n in range(count):
            async_task("bench.iobound.q2.sleep_sync", n)
    else:
        raise SystemExit(f"unknown system {system}")


def main() -> None:
    system, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with transaction.atomic():
        handoff(system, mode, count)
        print("ready", flush=True)
        sys.stdin.readline()
        commit_at = time.time()
    print(json.dumps({"commit_at": commit_at, "returned_at": time.time()}), flush=True)


if __name__ == "__main__":
    main()
