"""The admin changelist on a big table: 1,000,000 events on PostgreSQL.

    make bench-admin-changelist        # or: python bench/admin_changelist.py [--events N] [--runs R]

Times whole GET requests through Django's test client (middleware, queries, template):
the unfiltered list, each filter, searches, a detail page. Not part of ``make test``:
filling the table takes a minute.
"""

from __future__ import annotations

import argparse
import datetime

from admin_setup import fill, operator_client, report, setup_django, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="reuse the table if it has --events rows")
    args = parser.parse_args()
    setup_django()

    from django.db import connection
    from django.urls import reverse
    from django.utils import timezone

    from outbox.models import Event

    if not (args.keep and Event.objects.count() == args.events):
        # 2% failed, 1% pending, 0.5% discarded, the rest done: a busy site's table.
        fill(args.events, {"failed": 0.02, "pending": 0.01, "discarded": 0.005})
    client = operator_client()
    base = reverse("admin:outbox_event_changelist")
    today = timezone.localdate()
    tomorrow = today + datetime.timedelta(days=1)
    some = Event.objects.order_by("-pk").values_list("pk", flat=True)[args.events // 2]
    pages = [
        ("changelist, unfiltered", base),
        ("changelist, page 3", base + "?p=3"),
        ("changelist, status=failed", base + "?status__exact=failed"),
        ("changelist, status=done", base + "?status__exact=done"),
        ("changelist, status=discarded (5,000: counted exactly)", base + "?status__exact=discarded"),
        ("changelist, receiver filter", base + "?receiver=tests.testapp.receivers.record"),
        ("changelist, created today", base + f"?created_at__gte={today}&created_at__lt={tomorrow}"),
        ("changelist, search #id", base + f"?q=%23{some}"),
        ("changelist, search error text (scans)", base + "?q=refused"),
        ("changelist, search payload text (scans)", base + "?q=invoice-4242"),
        ("detail page", reverse("admin:outbox_event_change", args=[some])),
    ]
    print(f"{args.events:,} events, PostgreSQL {connection.pg_version // 10000}")
    for label, url in pages:
        queries: list[int] = []

        def count(execute, *args, queries=queries):
            queries.append(1)
            return execute(*args)

        with connection.execute_wrapper(count):
            assert client.get(url).status_code == 200, url
        times = timed(lambda url=url: client.get(url), args.runs)
        report(f"{label} ({len(queries)} queries)", times)


if __name__ == "__main__":
    main()
