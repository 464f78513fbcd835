"""Running claimed events: decode each payload, call its receiver, record the outcome.

Shared by every way of dispatching: the in-process worker runs whole batches here, and a
relay (such as the django-q2 one) runs the events it was handed here too, so retries,
backoff, fencing and error records are the same whichever process calls the receiver.
"""

from __future__ import annotations

import json
import logging
import random
import signal as signals
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import connections
from django.utils import timezone

from . import queries
from .conf import settings
from .decoding import PayloadDecoder
from .exceptions import DispatchError, OutboxError, UnknownReceiver
from .registry import get_receiver, get_signal

__all__ = ["Outcome", "ReceiverTimeout", "backoff_delay", "run_claimed"]

logger = logging.getLogger("outbox")


class ReceiverTimeout(OutboxError):
    """A receiver ran longer than its ``timeout``."""


@dataclass
class Outcome:
    """What :func:`run_claimed` got through: filled in as it goes, so it is right even
    when it is interrupted (a lost connection, a stop request)."""

    done: list[int] = field(default_factory=list)
    started: int = 0


def backoff_delay(attempts: int) -> float:
    """Seconds before retry number ``attempts``: exponential, capped, with jitter.

    The jitter draws from the upper half of the delay, so retries of events that failed
    together spread out without any retrying much sooner than planned.
    """
    base, cap = settings.BACKOFF_BASE_SECONDS, settings.BACKOFF_MAX_SECONDS
    delay = min(cap, base * 2 ** max(attempts - 1, 0))
    return random.uniform(delay / 2, delay)


def run_claimed(
    database: str,
    token: str,
    rows: Sequence[queries.Claimed],
    outcome: Outcome,
    should_stop: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Run claimed rows in order until done or ``should_stop()``.

    Failures are recorded as they happen (fenced on ``token``); successes are only listed in
    ``outcome.done``: the caller marks them done in one statement.
    """
    decoder = PayloadDecoder()
    payloads = [_parse(row.payload) for row in rows]
    for payload in payloads:
        decoder.add(payload)
    for row, payload in zip(rows, payloads, strict=True):
        if should_stop():
            break
        outcome.started += 1
        if _run_one(database, token, row, payload, decoder):
            outcome.done.append(row.id)
    return outcome


def _run_one(database: str, token: str, row: queries.Claimed, payload: Any, decoder: PayloadDecoder) -> bool:
    """Run one event; True on success. A failure is recorded here."""
    started = time.perf_counter()
    try:
        spec = get_receiver(row.receiver)
        signal = get_signal(row.signal)
        if spec is None or signal is None:
            missing = f"receiver {row.receiver!r}" if spec is None else f"signal {row.signal!r}"
            raise UnknownReceiver(
                f"{missing} is not registered in this worker process; nothing was imported or "
                f"called (connect it with outbox.receiver in a module imported at startup, then "
                f"replay the event)"
            )
        if row.attempts > row.max_attempts:
            raise DispatchError(
                f"gave up after {row.max_attempts} attempts: the worker running this event "
                f"stopped before finishing it (lease expired)"
            )
        if isinstance(payload, _Corrupt):
            raise DispatchError(f"the payload is not valid JSON: {payload.error}")
        sender, kwargs = decoder.decode(payload)
    except DispatchError as exc:
        _record_failure(database, token, row, exc, started, permanent=True)
        return False
    try:
        _call(spec.func, spec.timeout, signal=signal, sender=sender, **kwargs)
    except ReceiverTimeout as exc:
        _abandon_queries()
        _record_failure(database, token, row, exc, started, permanent=False)
        return False
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        # SystemExit and KeyboardInterrupt raised by a receiver are its failure, not the
        # worker's: recorded and retried like any other, and the batch goes on.
        _record_failure(database, token, row, exc, started, permanent=False)
        return False
    if logger.isEnabledFor(logging.INFO):
        elapsed = (time.perf_counter() - started) * 1000
        logger.info("event %d %s done in %.1f ms (attempt %d)", row.id, row.receiver, elapsed, row.attempts)
    return True


def _record_failure(
    database: str, token: str, row: queries.Claimed, exc: BaseException, started: float, permanent: bool
) -> None:
    error = f"{type(exc).__qualname__}: {exc}"
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    retry_at = None
    if not permanent and row.attempts < row.max_attempts:
        retry_at = timezone.now() + timedelta(seconds=backoff_delay(row.attempts))
    queries.record_failure(database, token, row.id, error[:10000], trace, retry_at)
    outcome = "failed for good" if retry_at is None else f"failed, retry at {retry_at:%H:%M:%S}"
    logger.warning(
        "event %d %s %s in %.1f ms (attempt %d/%d): %s",
        row.id,
        row.receiver,
        outcome,
        (time.perf_counter() - started) * 1000,
        row.attempts,
        row.max_attempts,
        error,
    )


def _abandon_queries() -> None:
    """After a timeout: cancel any query the receiver left running, and drop its connections.

    The timeout can interrupt a receiver while it waits on the database; its connection is
    then still busy with that query ("another command is already in progress") and the
    failure could not be recorded on it. Cancelling stops the query on the server too.
    """
    for connection in connections.all(initialized_only=True):
        raw = connection.connection
        if raw is None:
            continue
        cancel = getattr(raw, "cancel", None)  # psycopg 2 and 3
        if cancel is not None:
            try:
                cancel()
            except Exception:  # noqa: BLE001 - the connection is dropped next either way
                logger.debug("cancelling the timed-out query failed", exc_info=True)
        connection.close()


class _Corrupt:
    def __init__(self, error: Exception) -> None:
        self.error = error


def _parse(raw: Any) -> Any:
    if isinstance(raw, (str, bytes, bytearray)):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than Python's parser goes, which both
            # databases accept. It must fail this event alone, not the whole batch.
            return _Corrupt(exc)
    return raw


def _call(func: Callable[..., Any], timeout: float | None, **kwargs: Any) -> None:
    """Call a receiver, bounded by ``timeout`` seconds where SIGALRM allows it (the main
    thread on POSIX); elsewhere the timeout is not enforced."""
    if not timeout or threading.current_thread() is not threading.main_thread():
        func(**kwargs)
        return

    def expire(signum: int, frame: Any) -> None:
        raise ReceiverTimeout(f"the receiver ran longer than its timeout of {timeout}s")

    previous = signals.signal(signals.SIGALRM, expire)
    # A task queue running this (django-q2 bounds each task with alarm()) may have the
    # timer armed: it is put back, less the time spent here, once the receiver returns.
    outer, _ = signals.setitimer(signals.ITIMER_REAL, timeout)
    started = time.monotonic()
    try:
        func(**kwargs)
    finally:
        signals.setitimer(signals.ITIMER_REAL, 0)
        signals.signal(signals.SIGALRM, previous)
        if outer:
            signals.setitimer(signals.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.001))
