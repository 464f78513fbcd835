"""``manage.py run_outbox``: the outbox worker."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from outbox.checks import check_migrations, check_settings
from outbox.conf import settings
from outbox.limits import SETTINGS
from outbox.management.arguments import within
from outbox.worker import Worker

_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


class Command(BaseCommand):
    help = "Run deferred signal receivers for committed outbox events."
    requires_migrations_checks = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--database", help="Database alias to drain (default: OUTBOX['DATABASE']).")
        parser.add_argument(
            "--batch-size", type=within(SETTINGS["BATCH_SIZE"]), help="Events claimed per statement."
        )
        parser.add_argument(
            "--poll-interval", type=within(SETTINGS["POLL_INTERVAL"]), help="Seconds between polls."
        )
        parser.add_argument(
            "--lease-seconds", type=within(SETTINGS["LEASE_SECONDS"]), help="Lease of a claimed event."
        )
        parser.add_argument("--once", action="store_true", help="Drain everything due now, then exit.")
        parser.add_argument(
            "--no-listen",
            action="store_true",
            help="Poll only; do not LISTEN (for PgBouncer in transaction pooling mode).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        logger = logging.getLogger("outbox")
        logger.setLevel(_LEVELS.get(options["verbosity"], logging.DEBUG))
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        # Refuse to start on a bad setting (as manage.py's own checks do, unless skipped)
        # rather than die of it later, in a wait, a datetime or a query.
        problems = check_settings()
        if problems:
            raise CommandError(
                "refusing to start: "
                + "; ".join(f"{problem.msg} {problem.hint} ({problem.id})" for problem in problems)
            )
        database = options["database"] or settings.database
        for problem in check_migrations(databases=[database]):
            raise CommandError(f"{problem.msg} {problem.hint} ({problem.id})")
        Worker(
            database,
            batch_size=options["batch_size"],
            poll_interval=options["poll_interval"],
            lease_seconds=options["lease_seconds"],
            listen=not options["no_listen"],
            once=options["once"],
        ).run()
