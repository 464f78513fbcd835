"""``manage.py outbox_discard``: mark matching pending or failed events discarded."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from outbox import operations
from outbox.management import arguments
from outbox.models import Event


class Command(BaseCommand):
    help = "Discard events matching the filters (default: failed ones): they will never run."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        arguments.add_filter_arguments(parser, default_status="failed")

    def handle(self, *args: Any, **options: Any) -> None:
        database = arguments.database(options)
        queryset = operations.select_events(
            Event.objects.using(database), **arguments.filters(options, "failed")
        )
        try:
            result = operations.discard(queryset, dry_run=options["dry_run"])
        except DatabaseError as exc:
            raise CommandError(f"discard on database {database!r} failed: {exc}") from exc
        self.stdout.write(f"discard: {result}")
