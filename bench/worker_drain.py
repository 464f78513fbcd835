"""The drain rate of one in-process worker at given concurrencies: N ``pinged`` events (a
receiver that does nothing) committed at once, then ``Worker(once=True)`` timed, with the
process's CPU time per event (steadier than the rate on a busy machine).

For A/B runs of the worker's own overhead, on the test settings and any database::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_drain PYTHONPATH=. \\
        .venv/bin/python -m bench.worker_drain 5000 1,10 --rounds 3

Run it from each checkout being compared, one after the other, more than once: the machine's
load moves the rate more than small changes do. ``--bare`` hides ``prometheus_client`` and
``opentelemetry`` from the worker, as in the benchmark's own virtualenv (the test settings'
virtualenv has both, and observing each receiver call costs about as much as the rest).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=int)
    parser.add_argument("concurrency", help="comma-separated, e.g. 1,10")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bare", action="store_true", help="no metrics or traces libraries")
    args = parser.parse_args()
    if args.bare:
        import sys

        sys.modules["prometheus_client"] = sys.modules["opentelemetry"] = None
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from outbox.models import Event
    from outbox.worker import Worker
    from tests.testapp.signals import pinged

    call_command("migrate", verbosity=0)
    # Older checkouts have no concurrency: they run at 1.
    takes_concurrency = "concurrency" in inspect.signature(Worker).parameters
    report = {}
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        rates, cpu = [], []
        for _ in range(args.rounds):
            Event.objects.all().delete()
            with transaction.atomic():
                for i in range(args.events):
                    pinged.send(sender=None, n=i)
            options = {"concurrency": concurrency} if takes_concurrency else {}
            began, cpu_began = time.perf_counter(), time.process_time()
            Worker(once=True, listen=False, **options).run()
            rates.append(args.events / (time.perf_counter() - began))
            cpu.append(1e6 * (time.process_time() - cpu_began) / args.events)
            assert Event.objects.filter(status="done").count() == args.events
        report[concurrency] = {
            "events_per_second": round(statistics.median(rates)),
            "cpu_us_per_event": round(statistics.median(cpu), 1),
            "rates": [round(r) for r in rates],
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
