"""``manage.py run_outbox``: the outbox worker."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from outbox import metrics
from outbox.checks import check_settings, database_problem
from outbox.conf import settings
from outbox.limits import SETTINGS, Range
from outbox.management import arguments
from outbox.management.arguments import within
from outbox.metrics import MetricsUnavailable
from outbox.worker import Worker

_PORT = Range(int, 1, 65535)
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


class Command(BaseCommand):
    help = "Run deferred signal receivers for committed outbox events."
    # Django's own check would stop a worker started while the database is down (and it
    # only warns); the worker checks the outbox migrations itself, retrying until it can.
    requires_migrations_checks = False

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # None unless -v is given, so that LOGGING's level for "outbox" is kept otherwise.
        parser.set_defaults(verbosity=None)
        return parser

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
        parser.add_argument(
            "--concurrency",
            type=within(SETTINGS["CONCURRENCY"]),
            help="Receivers run at once (default: OUTBOX['CONCURRENCY']; 1: one after another).",
        )
        parser.add_argument(
            "--queue",
            action="append",
            type=arguments.queue,
            metavar="NAME",
            help="Drain only this queue (repeatable; default: every queue).",
        )
        parser.add_argument("--once", action="store_true", help="Drain everything due now, then exit.")
        parser.add_argument(
            "--no-listen",
            action="store_true",
            help="Poll only; do not LISTEN (for PgBouncer in transaction pooling mode).",
        )
        parser.add_argument(
            "--metrics-port",
            type=within(_PORT),
            metavar="PORT",
            help="Serve this worker's Prometheus metrics over HTTP on PORT (the metrics extra).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # Refuse to start on a bad setting (as manage.py's own checks do, unless skipped)
        # rather than die of it later, in a wait, a datetime or a query. The migrations are
        # checked by the worker, which waits out an unreachable database first.
        problems = check_settings()
        if not problems:  # and not on a database it cannot claim from
            problem = database_problem(options["database"] or settings.database)
            problems = [problem] if problem else []
        if problems:
            raise CommandError(
                "refusing to start: "
                + "; ".join(f"{problem.msg} {problem.hint} ({problem.id})" for problem in problems)
            )
        if options["metrics_port"] is not None:
            try:
                metrics.serve(options["metrics_port"])
            except (MetricsUnavailable, OSError) as exc:
                raise CommandError(f"--metrics-port {options['metrics_port']}: {exc}") from exc
        worker = Worker(
            options["database"] or settings.database,
            batch_size=options["batch_size"],
            poll_interval=options["poll_interval"],
            lease_seconds=options["lease_seconds"],
            listen=not options["no_listen"],
            once=options["once"],
            check_migrations=True,
            concurrency=options["concurrency"],
            queues=options["queue"],
        )
        restore = _configure_logging(options["verbosity"])
        try:
            worker.run()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        finally:
            restore()


def _configure_logging(verbosity: int | None) -> Callable[[], None]:
    """Set the "outbox" logger's level from ``-v`` if given, else INFO only where LOGGING
    set none; add a stderr handler if nothing would print. Returns what undoes it."""
    logger = logging.getLogger("outbox")
    level = logger.level
    if verbosity is not None:
        logger.setLevel(_LEVELS.get(verbosity, logging.DEBUG))
    elif level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    handler = None
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)

    def restore() -> None:
        logger.setLevel(level)
        if handler is not None:
            logger.removeHandler(handler)

    return restore
