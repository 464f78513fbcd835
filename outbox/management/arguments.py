"""argparse types and options shared by the outbox management commands.

Each type raises :class:`argparse.ArgumentTypeError` with a message that says what is
accepted, so a typo gets a usage error (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import re
from collections.abc import Callable
from typing import Any

from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from outbox.conf import settings
from outbox.limits import MAX_EVENT_ID, MAX_SECONDS, Range
from outbox.models import Event
from outbox.routing import QUEUE_RULE, valid_queue

__all__ = [
    "add_filter_arguments",
    "database",
    "duration",
    "format_duration",
    "filters",
    "id_range",
    "non_negative",
    "positive",
    "queue",
    "since",
    "within",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def _seconds(text: str) -> float | None:
    """The seconds ``text`` spells as a duration, or None if it is not spelt as one."""
    compact = text.strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(n + unit for n, unit in parts) != compact:
        return None
    return sum(float(n) * _UNITS[unit] for n, unit in parts)


def duration(text: str) -> datetime.timedelta:
    """``30s``, ``30m``, ``12h``, ``7d``, ``2w`` or a sum such as ``1h30m``, up to ten years."""
    seconds = _seconds(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a number and a unit (s, m, h, d or w), e.g. 30m, 12h, 7d"
        )
    if seconds > MAX_SECONDS:  # then neither timedelta nor now minus it could hold it
        raise argparse.ArgumentTypeError(
            f"{text!r} is longer than {MAX_SECONDS // 86400}d (ten years), the longest duration accepted"
        )
    return datetime.timedelta(seconds=seconds)


def format_duration(value: datetime.timedelta) -> str:
    """An exact spelling that :func:`duration` reads back: ``7d``, ``90m``, ``45s``."""
    seconds = value.total_seconds()
    for unit in "dhm":
        size = _UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def id_range(text: str) -> tuple[int, int]:
    """``15`` or an inclusive range ``10-20``, of ids an event can have."""
    first, sep, last = text.strip().partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an id or an id range such as 10-20") from None
    if not (1 <= low <= MAX_EVENT_ID and 1 <= high <= MAX_EVENT_ID):
        raise argparse.ArgumentTypeError(f"{text!r}: event ids run from 1 to {MAX_EVENT_ID}")
    if low > high:
        raise argparse.ArgumentTypeError(f"{text!r}: the range is empty (its first id is after its last)")
    return low, high


def since(text: str) -> datetime.datetime:
    """A duration back from now (``2h``), or a date or datetime (``2026-11-23T08:00``)."""
    if _seconds(text) is not None:
        return timezone.now() - duration(text)
    try:
        value = parse_datetime(text)
        if value is None and (day := parse_date(text)) is not None:
            value = datetime.datetime.combine(day, datetime.time())
        if value is not None and not timezone.is_aware(value):
            value = timezone.make_aware(value)
    except (ValueError, OverflowError) as exc:  # well formed, but no such day or time
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid date or datetime: {exc}") from None
    if value is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (such as 2h or 7d) "
            f"nor a date or datetime (such as 2026-11-23T08:00)"
        )
    return value


def queue(text: str) -> str:
    """A queue name, as ``outbox.receiver(..., queue=...)`` accepts it."""
    if not valid_queue(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a queue name: use {QUEUE_RULE}")
    return text


def within(limits: Range) -> Callable[[str], Any]:
    """A number in ``limits`` (``outbox.limits``), the range of the setting it overrides."""

    def parse(text: str) -> Any:
        try:
            value = limits.kind(text)
        except ValueError:
            kind = "a whole number" if limits.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not limits.holds(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {limits.describe()}")
        return value

    return parse


def _number(kind: type, smallest: float, inclusive: bool, words: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value < smallest or (value == smallest and not inclusive):  # NaN too
            raise argparse.ArgumentTypeError(f"{text!r} must {words}")
        return value

    return parse


def non_negative(kind: type) -> Callable[[str], Any]:
    """A number of ``kind`` that is zero or more."""
    return _number(kind, 0, True, "not be negative")


def positive(kind: type) -> Callable[[str], Any]:
    """A number of ``kind`` greater than zero."""
    return _number(kind, 0, False, "be greater than zero")


def add_filter_arguments(parser: argparse.ArgumentParser, default_status: str) -> None:
    """The event filters of ``outbox_replay`` and ``outbox_discard``."""
    parser.add_argument("--database", help="Database alias (default: OUTBOX['DATABASE']).")
    parser.add_argument(
        "--receiver", action="append", default=[], metavar="PATH", help="Receiver dotted path (repeatable)."
    )
    parser.add_argument(
        "--signal", action="append", default=[], metavar="PATH", help="Signal dotted path (repeatable)."
    )
    parser.add_argument(
        "--queue", action="append", default=[], type=queue, metavar="NAME", help="Queue (repeatable)."
    )
    parser.add_argument(
        "--status",
        action="append",
        choices=Event.Status.values,
        help=f"Event status (repeatable; default: {default_status}).",
    )
    parser.add_argument(
        "--id",
        action="append",
        default=[],
        type=id_range,
        metavar="N|N-M",
        help="Id or id range (repeatable).",
    )
    parser.add_argument(
        "--since",
        type=since,
        metavar="WHEN",
        help="Created since: a duration back from now (2h) or a datetime.",
    )
    parser.add_argument("--dry-run", action="store_true", help="Count what would change; change nothing.")


def filters(options: dict[str, Any], default_status: str) -> dict[str, Any]:
    """The keyword arguments of :func:`outbox.operations.select_events` from parsed options."""
    return {
        "receivers": options["receiver"],
        "signals": options["signal"],
        "queues": options["queue"],
        "statuses": options["status"] or [default_status],
        "ids": options["id"],
        "since": options["since"],
    }


def database(options: dict[str, Any]) -> str:
    """The ``--database`` alias, or ``OUTBOX["DATABASE"]``; a clear error if it is unknown."""
    alias = options.get("database") or settings.database
    if alias not in connections.settings:
        raise CommandError(
            f"unknown database alias {alias!r}; DATABASES has {', '.join(connections.settings)}"
        )
    return alias
