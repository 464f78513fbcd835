"""``manage.py outbox_replay``: make matching events due again, as the admin's action does."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from outbox import operations
from outbox.management import arguments
from outbox.models import Event


class Command(BaseCommand):
    help = "Replay events matching the filters (default: failed ones): due now, attempts reset."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        arguments.add_filter_arguments(parser, default_status="failed")
        parser.add_argument(
            "--include-done",
            action="store_true",
            help="Allow replaying done events, which runs their receivers again.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        database = arguments.database(options)
        chosen = arguments.filters(options, default_status="failed")
        if Event.Status.DONE in chosen["statuses"] and not options["include_done"]:
            raise CommandError(
                "replaying done events runs their receivers again: add --include-done to do so"
            )
        queryset = operations.select_events(Event.objects.using(database), **chosen)
        try:
            result = operations.replay(
                queryset, include_done=options["include_done"], dry_run=options["dry_run"]
            )
        except DatabaseError as exc:
            raise CommandError(f"replay on database {database!r} failed: {exc}") from exc
        self.stdout.write(f"replay: {result}")
