"""Replay 100,000 failed events through the admin's "select all N matching" action.

    make bench-admin-replay            # or: python bench/admin_replay.py [--events N] [--runs R]

On PostgreSQL (BENCH_DATABASE_URL, default a database of its own on the local server).
Each run POSTs the action exactly as the browser does (the failed filter, select_across=1,
the first page's ids) and times the request; the rows are then set back to failed and the
table vacuumed, so every run starts from the same table.
"""

from __future__ import annotations

import argparse

from admin_setup import fill, operator_client, report, setup_django, timed, vacuum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="failed events to replay")
    parser.add_argument("--done", type=int, default=100_000, help="done events beside them")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    setup_django()

    from django.db import connection
    from django.urls import reverse

    from outbox.models import Event

    total = args.events + args.done
    fill(total, {"failed": args.events / total})
    client = operator_client()
    url = reverse("admin:outbox_event_changelist") + "?status__exact=failed"
    first_page = [e.pk for e in client.get(url).context["cl"].result_list]

    def replay_all() -> None:
        response = client.post(
            url, {"action": "replay", "index": "0", "select_across": "1", "_selected_action": first_page}
        )
        assert response.status_code == 302, response.status_code

    times = []
    for _ in range(args.runs):
        times += timed(replay_all, 1)
        assert Event.objects.filter(status="pending").count() == args.events
        with connection.cursor() as cursor:
            cursor.execute("UPDATE outbox_event SET status = 'failed' WHERE status = 'pending'")
        vacuum()
    report(f"admin select-all replay of {args.events:,} failed events ({total:,} rows)", times)


if __name__ == "__main__":
    main()
