"""``manage.py outbox_prune``: delete old finished events in short batches."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from outbox import pruning, queries
from outbox.limits import SETTINGS
from outbox.management import arguments


class Command(BaseCommand):
    help = (
        "Delete done (or chosen finished) events older than --older-than, a batch per transaction. "
        "Pending and running events are never deleted."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--older-than",
            type=arguments.duration,
            required=True,
            metavar="AGE",
            help="Finished longer ago than this: 30m, 12h, 7d, 2w.",
        )
        parser.add_argument(
            "--status",
            action="append",
            choices=queries.PRUNABLE,
            help="Status to delete (repeatable; default: done).",
        )
        parser.add_argument(
            "--batch-size",
            type=arguments.within(SETTINGS["PRUNE_BATCH_SIZE"]),
            help="Rows per DELETE (default: OUTBOX['PRUNE_BATCH_SIZE']).",
        )
        parser.add_argument("--database", help="Database alias (default: OUTBOX['DATABASE']).")
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        database = arguments.database(options)
        statuses = options["status"] or ["done"]
        age = options["older_than"]
        ago = arguments.format_duration(age)
        try:
            if options["dry_run"]:
                counts = pruning.count_prunable(database, age, statuses)
                detail = ", ".join(f"{counts.get(s, 0)} {s}" for s in statuses)
                self.stdout.write(
                    f"would delete {sum(counts.values())} events finished over {ago} ago ({detail})"
                )
                return
            result = pruning.prune(database, age, statuses=statuses, batch_size=options["batch_size"])
        except DatabaseError as exc:
            raise CommandError(f"pruning database {database!r} failed: {exc}") from exc
        detail = ", ".join(f"{n} {s}" for s, n in result.deleted.items())
        self.stdout.write(
            f"deleted {result.total} events finished over {ago} ago ({detail}) in {result.batches} batch(es)"
        )
