"""When a failed attempt is tried again: the backoff curve, or what the receiver asked for.

A receiver steers its retry by raising :class:`~outbox.RetryAfter` (a wait of its own,
within ``RETRY_AFTER_MAX_SECONDS``) or :class:`~outbox.PermanentFailure` (no retry at all);
any other failure is retried on the backoff curve. Every one of them counts as an attempt,
so an event out of attempts is failed whatever it raised.
"""

from __future__ import annotations

import logging
import random

from . import queries
from .conf import settings
from .exceptions import PermanentFailure, RetryAfter

__all__ = ["backoff_delay", "next_attempt", "retry_after_delay"]

logger = logging.getLogger("outbox")


def next_attempt(
    row: queries.Claimed, exc: BaseException, permanent: bool, retry_in: float | None
) -> float | None:
    """Seconds until ``row`` is tried again after failing with ``exc``; None: failed for good
    (``permanent``, a :class:`~outbox.PermanentFailure`, or out of attempts). ``retry_in``,
    if given, is the wait already decided (a timed-out receiver's, see outbox.overdue)."""
    if permanent or isinstance(exc, PermanentFailure) or row.attempts >= row.max_attempts:
        return None
    if retry_in is not None:
        return retry_in
    if isinstance(exc, RetryAfter):
        return retry_after_delay(row, exc)
    return backoff_delay(row.attempts)


def backoff_delay(attempts: int) -> float:
    """Seconds before retry number ``attempts``: exponential, capped, with jitter.

    The jitter draws from the upper half of the delay, so retries of events that failed
    together spread out without any retrying much sooner than planned.
    """
    base, cap = settings.BACKOFF_BASE_SECONDS, settings.BACKOFF_MAX_SECONDS
    # The exponent is capped: MAX_ATTEMPTS may be 2**31 - 1, and 2 ** 1024 is no float.
    delay = min(cap, base * 2 ** min(max(attempts - 1, 0), 1000))
    return random.uniform(delay / 2, delay)


def retry_after_delay(row: queries.Claimed, exc: RetryAfter) -> float:
    """Seconds before the retry a receiver asked for: at least what it asked for (clamped to
    ``RETRY_AFTER_MAX_SECONDS``, with a warning), plus up to a tenth of it, at most a minute,
    of jitter."""
    cap = settings.RETRY_AFTER_MAX_SECONDS
    wait = exc.seconds
    if wait > cap:
        logger.warning(
            "event %d %s asked to retry after %gs, longer than RETRY_AFTER_MAX_SECONDS: retry after %gs",
            row.id,
            row.receiver,
            wait,
            cap,
        )
        wait = cap
    return wait + random.uniform(0, min(wait / 10, 60.0))
