"""Where the time of one send goes: the write path taken apart, one client, in-process.

``make bench-sendpath`` (after ``make bench`` has created its databases). Each variant is
``with atomic(): Item(...).save(); <step>``, run in random order, round after round, on one
connection; it prints the median time per transaction, what the step adds to the baseline,
the ratio, and the process's own CPU per transaction (client-side work plus its system calls).

- ``select 1``: one more round trip and nothing else: what any hand-off costs at least;
- ``raw insert``: one outbox row written by a constant statement, no NOTIFY;
- ``ours``: ``work1.send(...)`` with one deferred receiver (nobody waits: no NOTIFY);
- ``ours, 3 receivers``: ``work3.send(...)``, three deferred receivers (one INSERT of three rows);
- ``ours, encode only``: the send path's Python without the INSERT;
- ``our INSERT, built once``: the statement ``ours`` sends (deciding whether to NOTIFY: see
  ``outbox.wakeup``), built before the run, so no Python of ours; ``... without the NOTIFY
  decision``: the same statement without it (what the decision costs the database).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402

from bench.benchapp.models import Item  # noqa: E402
from bench.benchapp.signals import work1, work3  # noqa: E402
from bench.child import _RAW  # noqa: E402
from outbox import serialization  # noqa: E402


def _sql(statement: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement)


def _encode(obj: Item) -> None:
    serialization.dumps(serialization.encode_payload(Item, {"item_id": obj.pk}))


def _our_insert(decide: bool) -> str:
    from outbox import queries

    connection.ensure_connection()
    payload = serialization.dumps(serialization.encode_payload(Item, {"item_id": 1}))
    row = queries.NewEvent("bench.benchapp.receivers.noop", 8)
    return queries._postgresql_insert(
        connection.connection, "bench.benchapp.signals.work1", [row], payload, decide
    )


_OURS, _OURS_UNDECIDED = _our_insert(True), _our_insert(False)

STEPS = {
    "baseline: save only": lambda obj: None,
    "select 1": lambda obj: _sql("SELECT 1"),
    "raw insert": lambda obj: _sql(_RAW),
    "ours": lambda obj: work1.send(sender=Item, item_id=obj.pk),
    "ours, 3 receivers": lambda obj: work3.send(sender=Item, item_id=obj.pk),
    "ours, encode only": _encode,
    "our INSERT, built once": lambda obj: _sql(_OURS),
    "... without the NOTIFY decision": lambda obj: _sql(_OURS_UNDECIDED),
}


def one(step) -> None:
    with transaction.atomic():
        obj = Item(name="bench", quantity=1)
        obj.save()
        step(obj)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    for step in STEPS.values():
        for _ in range(50):
            one(step)
    wall: dict[str, list[float]] = {name: [] for name in STEPS}
    cpu = dict.fromkeys(STEPS, 0.0)
    names = list(STEPS)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        random.shuffle(names)
        for name in names:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            one(STEPS[name])
            wall[name].append(time.perf_counter() - wall0)
            cpu[name] += time.process_time() - cpu0
    base = statistics.median(wall["baseline: save only"])
    rounds = len(wall[names[0]])
    print(f"{'step':32} {'median':>9} {'adds':>9} {'ratio':>6} {'client CPU':>11}   ({rounds} rounds)")
    for name in STEPS:
        median = statistics.median(wall[name])
        print(
            f"{name:32} {median * 1e6:7.0f} us {(median - base) * 1e6:+7.0f} us {median / base:5.2f}x "
            f"{cpu[name] / len(wall[name]) * 1e6:8.0f} us"
        )


if __name__ == "__main__":
    main()
