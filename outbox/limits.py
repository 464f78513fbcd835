"""The ranges of the outbox's numbers: what holds them, and what is sane.

One table serves every place a number comes in: the ``OUTBOX`` settings (``manage.py
check``, and each setting again when it is first read), ``connect()``'s options, the worker's
arguments and the management commands' argparse types. A number outside its range is refused
there with the range in the message; it never reaches a column that overflows (aborting the
sender's transaction), a ``timedelta`` or a ``datetime`` that cannot hold it, or a wait that
raises ``OverflowError`` in the worker.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

__all__ = ["MAX_EVENT_ID", "MAX_SECONDS", "SETTINGS", "Range", "setting_problem"]

#: The longest duration anywhere (ten years): now plus or minus it is a datetime for
#: millennia to come, and a third of it is a wait that threading and setitimer accept.
MAX_SECONDS = 10 * 365 * 86400

#: What a PositiveIntegerField holds on every database (PostgreSQL ``integer``).
MAX_INTEGER = 2**31 - 1

#: What the BigAutoField ``id`` holds (PostgreSQL ``bigint``).
MAX_EVENT_ID = 2**63 - 1

#: PostgreSQL's longest identifier, in bytes (NAMEDATALEN - 1): the longest NOTIFY channel.
MAX_CHANNEL_BYTES = 63


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


@dataclass(frozen=True)
class Range:
    """Whole numbers (``kind=int``) or real numbers (``kind=float``) from ``low`` to ``high``.

    ``above=True`` excludes ``low`` itself ("greater than 0"). Booleans are never numbers here,
    and NaN and infinities are outside every range.
    """

    kind: type
    low: float
    high: float
    above: bool = False
    unit: str = ""

    def describe(self) -> str:
        """The range in words, for error messages and hints."""
        what = "a whole number" if self.kind is int else "a number"
        what += f" of {self.unit}" if self.unit else ""
        if self.above:
            return f"{what} greater than {_plain(self.low)} and at most {_plain(self.high)}"
        return f"{what} from {_plain(self.low)} to {_plain(self.high)}"

    def is_kind(self, value: Any) -> bool:
        """True if ``value`` has the right type, whatever its size."""
        if isinstance(value, bool):
            return False
        return type(value) is int if self.kind is int else isinstance(value, Real)

    def holds(self, value: Any) -> bool:
        """True if ``value`` has the right type and lies in the range."""
        if not self.is_kind(value) or not math.isfinite(value):
            return False
        return (value > self.low if self.above else value >= self.low) and value <= self.high


_SECONDS = Range(float, 0, MAX_SECONDS, above=True, unit="seconds")

#: The range of each numeric setting.
SETTINGS: dict[str, Range] = {
    "MAX_ATTEMPTS": Range(int, 1, MAX_INTEGER),
    "BACKOFF_BASE_SECONDS": _SECONDS,
    "BACKOFF_MAX_SECONDS": _SECONDS,
    "RETRY_AFTER_MAX_SECONDS": _SECONDS,
    # A lease shorter than a second would be extended (or lost) several times a second.
    "LEASE_SECONDS": Range(float, 1, MAX_SECONDS, unit="seconds"),
    "RELAY_LEASE_SECONDS": Range(float, 1, MAX_SECONDS, unit="seconds"),
    "POLL_INTERVAL": Range(float, 0, 86400, above=True, unit="seconds"),
    "PRUNE_INTERVAL": _SECONDS,
    # Claimed ids go into one statement's IN list on SQLite, whose limit is 32766 parameters.
    "BATCH_SIZE": Range(int, 1, 10_000),
    "RELAY_TASK_SIZE": Range(int, 1, 10_000),
    # Each slot may be a thread with its own database connections.
    "CONCURRENCY": Range(int, 1, 1_000),
    "RELAY_QUEUE_LIMIT": Range(int, 1, 1_000_000),
    # PostgreSQL's jsonb holds at most 256 MiB less one byte.
    "MAX_PAYLOAD_BYTES": Range(int, 1, 2**28 - 1, unit="bytes"),
    "PRUNE_BATCH_SIZE": Range(int, 1, 100_000),
    "DASHBOARD_CACHE_SECONDS": Range(int, 1, 86400, unit="seconds"),
}

#: The old wording of a value of the wrong type (outbox.E004), kept for those who grep for it.
_KIND_WORDS = {int: "must be a positive integer", float: "must be a positive number"}


@dataclass(frozen=True)
class Problem:
    """What is wrong with one setting: the system check id, the message and a hint."""

    id: str
    msg: str
    hint: str


def setting_problem(key: str, value: Any) -> Problem | None:
    """What is wrong with ``OUTBOX[key] = value`` for a known ``key``, or None.

    ``outbox.E004``: the wrong type, or not positive; ``outbox.E007``: the right type, out
    of the range the outbox can hold (too large, or below a sane minimum).
    """
    shown = f"OUTBOX[{key!r}] = {value!r}"
    if key in SETTINGS:
        limits = SETTINGS[key]
        hint = f"{key} takes {limits.describe()}."
        if not limits.is_kind(value) or not value > 0:
            return Problem("outbox.E004", f"{shown} {_KIND_WORDS[limits.kind]}.", hint)
        if not limits.holds(value):
            return Problem("outbox.E007", f"{shown} is out of range.", hint)
        return None
    if key == "PRUNE_AFTER":
        hint = f"PRUNE_AFTER takes None, or {_SECONDS.describe()} or a timedelta as long."
        seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else value
        if value is not None and (not _SECONDS.is_kind(seconds) or not seconds > 0):
            return Problem(
                "outbox.E004",
                f"{shown} must be None, a positive number of seconds or a positive timedelta.",
                hint,
            )
        if value is not None and not _SECONDS.holds(seconds):
            return Problem("outbox.E007", f"{shown} is out of range.", hint)
        return None
    if key == "METRICS_TOKEN" and value is not None and not (isinstance(value, str) and value):
        return Problem("outbox.E004", f"{shown} must be None or a non-empty string.", "See docs/settings.md.")
    if key == "METRICS_ALLOWED_IPS":
        return _networks_problem(shown, value)
    if key in ("WORKER_ASYNC_COMMIT", "WORKER_ANALYZE", "WORKER_CLAIM_AHEAD") and not isinstance(value, bool):
        return Problem("outbox.E004", f"{shown} must be True or False.", f"{key} takes True or False.")
    if key in ("DATABASE", "DISPATCHER", "NOTIFY_CHANNEL") and not isinstance(value, str):
        if value is None and key != "NOTIFY_CHANNEL":
            return None
        return Problem("outbox.E004", f"{shown} must be a string.", f"{key} takes a string.")
    if key == "NOTIFY_CHANNEL" and not 0 < len(value.encode()) <= MAX_CHANNEL_BYTES:
        return Problem(
            "outbox.E007",
            f"{shown} is out of range.",
            f"NOTIFY_CHANNEL takes a PostgreSQL channel name from 1 to {MAX_CHANNEL_BYTES} bytes long.",
        )
    return None


def _networks_problem(shown: str, value: Any) -> Problem | None:
    hint = 'METRICS_ALLOWED_IPS takes a list of addresses or networks, such as ["10.0.0.0/8", "::1"].'
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        return Problem("outbox.E004", f"{shown} must be a list or tuple of strings.", hint)
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except (TypeError, ValueError):
            return Problem("outbox.E004", f"{shown}: {item!r} is not an IP address or network.", hint)
    return None
