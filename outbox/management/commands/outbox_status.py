"""``manage.py outbox_status``: backlog, lag, failures and throughput, for people and monitors.

Exit status: 0 healthy; 3 a threshold (``--max-lag``, ``--max-failed``, ``--max-due``)
was passed; 1 the outbox could not be read (database down, unknown alias); 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from outbox.management import arguments
from outbox.monitoring import Report, Thresholds, attention, collect

#: Exit status when a threshold was passed (1 and 2 are taken by errors and usage).
UNHEALTHY = 3


class Command(BaseCommand):
    help = "Report the outbox backlog, lag, failures and throughput; exit 3 when a threshold is passed."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--database", help="Database alias (default: OUTBOX['DATABASE']).")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")
        parser.add_argument(
            "--count-done",
            action="store_true",
            help="Also count done events: a scan of the whole table, slow on millions of rows.",
        )
        parser.add_argument(
            "--max-lag",
            type=arguments.non_negative(float),
            metavar="SECONDS",
            help="Unhealthy when lag exceeds this.",
        )
        parser.add_argument(
            "--max-failed",
            type=arguments.non_negative(int),
            metavar="N",
            help="Unhealthy when failed events exceed this.",
        )
        parser.add_argument(
            "--max-due",
            type=arguments.non_negative(int),
            metavar="N",
            help="Unhealthy when due events exceed this.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        database = arguments.database(options)
        limits = Thresholds(options["max_lag"], options["max_failed"], options["max_due"])
        try:
            report = collect(database, thresholds=limits, count_done=options["count_done"])
        except DatabaseError as exc:
            raise CommandError(f"cannot read the outbox on database {database!r}: {exc}") from exc
        if options["json"]:
            self.stdout.write(json.dumps(report.as_json(), indent=2))
        else:
            self.stdout.write(_text(report))
        if report.problems:
            raise CommandError("unhealthy: " + "; ".join(report.problems), returncode=UNHEALTHY)


def _text(report: Report) -> str:
    by_status = report.by_status
    counts = ", ".join(f"{status} {'-' if n is None else n}" for status, n in by_status.items())
    windows = " / ".join(str(n) for n in report.done_in_last_minutes.values())
    rates = " / ".join(f"{r:.2f}" for r in report.rates.values())
    minutes = "/".join(str(m) for m in report.done_in_last_minutes)
    when = report.oldest_due_at
    if isinstance(when, datetime.datetime):
        when = f"{when:%Y-%m-%d %H:%M:%S}"
    oldest = f" (oldest due since {when})" if when else ""
    lines = [
        f"outbox on database {report.database!r} ({report.vendor}) at {report.now:%Y-%m-%d %H:%M:%S %Z}",
        f"lag: {report.lag_seconds:.1f}s{oldest}; due now: {report.due}",
        f"events: {counts}" + ("" if by_status["done"] is not None else " (done: pass --count-done)"),
        f"done in the last {minutes} min: {windows} ({rates} per second)",
    ]
    if report.overdue:
        lines.append(
            f"overdue: {report.overdue} receivers ran past their timeout and still run in a worker "
            f"thread; their events are failed and held until the thread returns"
        )
    if report.by_receiver:
        statuses = [s for s, n in by_status.items() if n is not None]
        width = max(len(r) for r in report.by_receiver)
        lines.append(f"  {'receiver':<{width}}  " + "  ".join(f"{s:>9}" for s in statuses))
        for receiver, row in report.by_receiver.items():
            lines.append(f"  {receiver:<{width}}  " + "  ".join(f"{row.get(s, 0):>9}" for s in statuses))
    if report.by_queue:
        statuses = [s for s, n in by_status.items() if n is not None]
        width = max(len("queue"), *(len(q) for q in report.by_queue))
        lines.append(f"  {'queue':<{width}}  " + "  ".join(f"{s:>9}" for s in statuses))
        for queue, row in report.by_queue.items():
            lines.append(f"  {queue:<{width}}  " + "  ".join(f"{row.get(s, 0):>9}" for s in statuses))
    if report.blocked_keys:
        lines.append(
            f"blocked: {report.blocked_keys} ordering key(s) held by a failed event, "
            f"{report.blocked_events} event(s) waiting behind them (replay or discard the failed ones)"
        )
    if report.table:
        t = report.table
        lines.append(
            f"table: ~{t['live_rows']:,} live rows, {t['dead_rows']:,} dead, "
            f"{t['size_bytes'] / 2**20:.1f} MiB; last autovacuum {t['last_autovacuum'] or 'never'}"
            + ("" if t["autovacuum_on"] else " (autovacuum is OFF on this server)")
        )
        holder = t.get("horizon")
        if holder:
            lines.append(
                f"xmin horizon: held furthest back by pid {holder['pid']} (database {holder['database']!r}, "
                f"{holder['state']}), a transaction open {holder['transaction_seconds'] or 0:,.0f}s, "
                f"{holder['xmin_age']:,} transactions behind"
            )
        lines.extend(f"ATTENTION: {note}" for note in attention(t))
    lines.extend(f"PROBLEM: {problem}" for problem in report.problems)
    return "\n".join(lines)
