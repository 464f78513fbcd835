"""Running claimed events: decode each payload, call its receiver, record the outcome.

Shared by every way of dispatching: the in-process worker runs whole batches here, and a
relay (such as the django-q2 one) runs the events it was handed here too, so retries,
backoff, fencing and error records are the same whichever process calls the receiver.
"""

from __future__ import annotations

import json
import logging
import signal as signals
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from django.db import connections, transaction

from . import coroutines, current, observability, queries
from .claims import Claim
from .decoding import PayloadDecoder
from .exceptions import DispatchError, LeaseLost, OutboxError, UnknownReceiver
from .query_killer import killing_queries_after
from .registry import get_receiver, get_signal
from .retries import backoff_delay, next_attempt
from .transactions import Before, TransactionLeftOpen, open_transactions, roll_back_left_open

__all__ = [
    "Prepared",
    "ReceiverTimeout",
    "backoff_delay",
    "prepare",
    "record_failure",
    "run_claimed",
]

logger = logging.getLogger("outbox")


class ReceiverTimeout(OutboxError):
    """A receiver ran longer than its ``timeout``."""


def run_claimed(claim: Claim, should_stop: Callable[[], bool] = lambda: False) -> Claim:
    """Run a claim's rows in order until done, ``should_stop()``, or the rest is handed back.

    The sequential path (concurrency 1, and relayed tasks). Failures are recorded as they
    happen (fenced on the claim's token); successes are only noted in ``claim``: the caller
    writes them done in one statement (:meth:`Claim.finish`). Orphans (``row.alone``:
    reclaimed after their worker died) are run alone instead: see :func:`_run_alone`.
    """
    # Logging is decided once per batch: at thousands of events a second, even the
    # level test adds up, and a line per event at INFO would flood the log.
    info, debug = logger.isEnabledFor(logging.INFO), logger.isEnabledFor(logging.DEBUG)
    began = time.perf_counter()
    started_before, done_before = claim.started, claim.succeeded
    decoder, payloads = decode_batch(claim.rows)
    count_done = observability.done
    # The connections in a transaction before the batch (none in a worker, which runs in
    # autocommit): after each receiver every other one is out of a transaction again
    # (call_receiver rolls back what it left open), so this holds for the next receiver too,
    # and is looked up once per batch rather than once per event.
    before = open_transactions()
    while not should_stop():
        row = claim.next()
        if row is None:
            break
        payload = payloads[row.id]
        started = time.perf_counter() if debug else 0.0
        if row.alone:
            succeeded = _run_alone(claim, row, payload, decoder)
            claim.ran(row.id, succeeded, recorded=True)
        else:
            succeeded, written = _run_one(claim, row, payload, decoder, before)
            claim.ran(row.id, succeeded, recorded=written)
        if succeeded and debug:
            elapsed = (time.perf_counter() - started) * 1000
            logger.debug(
                "event %d %s done in %.1f ms (attempt %d)", row.id, row.receiver, elapsed, row.attempts
            )
        if succeeded:
            count_done(row)
    if info:
        ran, done = claim.started - started_before, claim.succeeded - done_before
        left = f", {len(claim) - ran} handed back" if ran < len(claim) else ""
        elapsed = (time.perf_counter() - began) * 1000
        logger.info(
            "batch of %d events: %d done, %d failed in %.1f ms%s", ran, done, ran - done, elapsed, left
        )
    return claim


def decode_batch(rows: Sequence[queries.Claimed]) -> tuple[PayloadDecoder, dict[int, Any]]:
    """Parse the payloads of a batch and fetch the model rows they name (one query per model,
    from the calling thread); return the decoder and each row's parsed payload by id."""
    decoder = PayloadDecoder()
    payloads = {}
    for row in rows:
        raw = row.payload
        payload = payloads[row.id] = _parse(raw)
        if not _names_no_instance(raw):
            decoder.add(payload)
    decoder.prefetch()
    return decoder, payloads


def _names_no_instance(raw: Any) -> bool:
    """Whether JSON text surely names no model instance, so that the walk for the rows to
    fetch can be skipped (most payloads: primitives, and model classes as senders). An
    instance's reference holds the string "model", written as such unless escaped, and no
    escape but a \\u one spells a letter."""
    return type(raw) is str and '"model"' not in raw and "\\u" not in raw


def _run_alone(claim: Claim, row: queries.Claimed, payload: Any, decoder: PayloadDecoder) -> bool:
    """Run an orphan of a dead worker's batch, its outcome recorded at once; True on success.

    Its attempt is counted, and the row marked in hand, before its receiver runs: if it
    kills this worker too, the next claim knows this row did it, and charges it alone (the
    batch's death was pinned on none of its rows). Only after deaths: healthy batches
    never come here.
    """
    alone = begin_alone(claim, row)
    if alone is None:
        return False
    succeeded, written = _run_one(claim, alone, payload, decoder)
    if succeeded and not written:
        claim.write_done([row.id])
    return succeeded


def begin_alone(claim: Claim, row: queries.Claimed) -> queries.Claimed | None:
    """Count the attempt of an orphan about to run alone (see :func:`_run_alone`); return
    the row with its attempts as counted, or None if its lease was lost meanwhile (another
    worker holds it)."""
    attempts = claim.run_alone(row.id)
    if attempts is None:
        return None
    logger.info("event %d was in a batch whose worker died: run alone (attempt %d)", row.id, attempts)
    return replace(row, attempts=attempts)


class Prepared:
    """A row ready to call: its receiver, signal, decoded arguments, the claimed row (what
    :func:`outbox.current_event` describes while it runs; None: no event) and its claim.

    ``written`` becomes True when the call wrote the event done itself (``atomic=True``
    receivers: see :func:`call_receiver`), so that nobody writes it again."""

    __slots__ = ("claim", "kwargs", "row", "sender", "signal", "spec", "written")

    def __init__(
        self,
        spec: Any,
        signal: Any,
        sender: Any,
        kwargs: dict[str, Any],
        row: queries.Claimed | None = None,
        claim: Claim | None = None,
    ) -> None:
        self.spec, self.signal, self.sender, self.kwargs = spec, signal, sender, kwargs
        self.row, self.claim = row, claim
        self.written = False


def prepare(claim: Claim, row: queries.Claimed, payload: Any, decoder: PayloadDecoder) -> Prepared | None:
    """Look up a row's receiver and decode its arguments; None if that failed (recorded,
    for good: no retry would change it)."""
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
        record_failure(claim, row, exc, started, permanent=True)
        return None
    return Prepared(spec, signal, sender, kwargs, row, claim)


def _run_one(
    claim: Claim,
    row: queries.Claimed,
    payload: Any,
    decoder: PayloadDecoder,
    before: Before | None = None,
) -> tuple[bool, bool]:
    """Run one event; return (succeeded, already written done). A failure is recorded here."""
    started = time.perf_counter()
    ready = prepare(claim, row, payload, decoder)
    if ready is None:
        return False, True
    failure = call_receiver(ready, before)
    if failure is not None:
        record_failure(claim, row, failure, started, permanent=False)
        return False, True
    return True, ready.written


def call_receiver(
    ready: Prepared,
    before: Before | None = None,
    before_done: Callable[[], None] | None = None,
) -> BaseException | None:
    """Call one receiver; return its failure, None on success. ``before``: this thread's
    connections and those in a transaction now (:func:`open_transactions`), if the caller
    took them for its batch (else taken here).

    Whatever it raises is its failure, not the worker's: SystemExit, KeyboardInterrupt,
    CancelledError and GeneratorExit too, except Ctrl-C (see _is_ctrl_c). So is returning
    with a transaction open on any of the worker's connections: rolled back, or later
    writes (the worker's records among them) would never commit.

    An ``atomic=True`` receiver runs in a transaction that also writes its event done
    (:func:`_call_atomically`); ``before_done`` is called in it first, and may raise to
    roll it back (the concurrent runner's check that the attempt has not timed out).
    """
    if before is None:
        before = open_transactions()
    failure: BaseException | None = None
    token = current.enter(ready.row)  # not current.running(): a generator per event costs more
    try:
        with observability.watching(ready):
            spec = ready.spec
            if spec.atomic and ready.claim is not None:
                _call_atomically(ready, before_done)
            else:
                _call(spec.func, spec.timeout, signal=ready.signal, sender=ready.sender, **ready.kwargs)
    except ReceiverTimeout as exc:
        _abandon_queries()
        failure = exc
    except BaseException as exc:
        if _is_ctrl_c(exc):
            roll_back_left_open(before)
            raise
        failure = exc
    finally:
        current.end(token)
    left = roll_back_left_open(before)
    if not left:
        return failure
    also = "" if failure is None else f" (and raised {_error_text(failure)})"
    error = TransactionLeftOpen(
        f"the receiver left a transaction open on database {', '.join(map(repr, left))}{also}; "
        f"its uncommitted writes were rolled back"
    )
    error.__cause__ = failure
    return error


def _call_atomically(ready: Prepared, before_done: Callable[[], None] | None) -> None:
    """Call an ``atomic=True`` receiver inside a transaction on the outbox's database and
    write its event done, fenced on the claim's token, in that same transaction.

    The receiver's writes to that database and the event's "done" commit together or not
    at all: if the receiver raises, both roll back and the attempt is recorded as failed;
    if this worker lost the lease meanwhile (the row carries another token, or none), the
    fenced UPDATE matches nothing and :class:`~outbox.exceptions.LeaseLost` rolls the
    receiver's writes back; if the process dies before the COMMIT, the server rolls both
    back and the event runs again.
    """
    claim, row, spec = ready.claim, ready.row, ready.spec
    assert claim is not None and row is not None
    connection = connections[claim.database]
    with transaction.atomic(using=claim.database):
        depth = len(connection.savepoint_ids)
        _call(spec.func, spec.timeout, signal=ready.signal, sender=ready.sender, **ready.kwargs)
        if len(connection.savepoint_ids) != depth or not connection.in_atomic_block:
            raise TransactionLeftOpen(
                "the atomic receiver left an atomic block open (entered and never exited); its "
                "writes were rolled back"
            )
        if connection.needs_rollback:
            raise DispatchError(
                "the atomic receiver caught a database error and went on: its transaction can "
                "only roll back (wrap the statement that may fail in its own transaction.atomic())"
            )
        if before_done is not None:
            before_done()
        if not claim.write_done([row.id]):
            raise LeaseLost(
                f"event {row.id}: this worker lost its lease before the receiver finished (another "
                f"worker took the event, or it was replayed or discarded); the receiver's writes "
                f"were rolled back"
            )
    ready.written = True


def _is_ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` may be Ctrl-C rather than the receiver's own doing: a
    KeyboardInterrupt where Python's SIGINT handler is in place. Worker.run() replaces that
    handler (SIGINT asks it to stop after the receiver in hand), so this is a batch run
    from a shell or a script, whose operator wants the process stopped."""
    return (
        isinstance(exc, KeyboardInterrupt)
        and threading.current_thread() is threading.main_thread()
        and signals.getsignal(signals.SIGINT) is signals.default_int_handler
    )


def record_failure(
    claim: Claim,
    row: queries.Claimed,
    exc: BaseException,
    started: float,
    permanent: bool,
    retry_in: float | None = None,
    overdue: bool = False,
) -> None:
    """Record a failed attempt of ``row``: a retry after backoff, or failed for good when
    ``permanent`` or out of attempts; ``retry_in`` overrides the backoff. ``overdue``:
    only store the error of a receiver still running past its timeout (outbox.concurrent).

    The receiver may steer this: :class:`~outbox.RetryAfter` sets the wait (within
    ``RETRY_AFTER_MAX_SECONDS``, jitter only upwards), :class:`~outbox.PermanentFailure`
    fails the event for good. Either is an attempt, so the last one fails as any failure.
    """
    if isinstance(exc, LeaseLost):  # not this worker's event any more: nothing to record
        logger.warning("event %d %s: %s", row.id, row.receiver, exc)
        return
    error = _error_text(exc)[:10000]
    trace = _traceback_text(exc)
    if overdue:
        claim.overdue(row.id, error, trace)
        return
    retry_in = next_attempt(row, exc, permanent, retry_in)
    claim.fail(row.id, error, trace, retry_in)
    observability.failed(row, retry_in is None)
    outcome = "failed for good" if retry_in is None else f"failed, retry in {retry_in:.1f}s"
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


# The text of a failure is the receiver's to choose, and must still be stored: computed so
# that it cannot raise, and cleaned of what the database refuses (NUL in PostgreSQL text,
# lone surrogates in any UTF-8 encoding) with visible escapes in their place.


def _error_text(exc: BaseException) -> str:
    """``Type: message``, whatever the exception's ``__str__`` does."""
    name = type(exc).__qualname__
    try:
        message = str(exc)
    except BaseException as inner:  # noqa: BLE001 - a receiver's __str__ may raise anything
        message = f"<{name} object: str() raised {type(inner).__qualname__}>"
    return _storable(f"{name}: {message}")


def _traceback_text(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException as inner:  # noqa: BLE001 - formatting runs the exception's own code
        text = f"(the traceback could not be formatted: {type(inner).__qualname__})"
    return _storable(text)


def _storable(text: str) -> str:
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


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
    thread on POSIX); elsewhere the timeout is not enforced. An async receiver is awaited
    instead, its timeout enforced by cancellation (outbox.coroutines)."""
    if coroutines.is_async(func):
        coroutines.run(func, timeout, **kwargs)
        return
    if not timeout or threading.current_thread() is not threading.main_thread():
        coroutines.refuse_awaitable(func, func(**kwargs))
        return

    def expire(signum: int, frame: Any) -> None:
        raise ReceiverTimeout(f"the receiver ran longer than its timeout of {timeout}s")

    previous = signals.signal(signals.SIGALRM, expire)
    # A task queue running this (django-q2 bounds each task with alarm()) may have the
    # timer armed: it is put back, less the time spent here, once the receiver returns.
    outer, _ = signals.setitimer(signals.ITIMER_REAL, timeout)
    started = time.monotonic()
    try:
        with killing_queries_after(timeout):  # MySQL: the alarm cannot end a query's wait
            coroutines.refuse_awaitable(func, func(**kwargs))
    finally:
        signals.setitimer(signals.ITIMER_REAL, 0)
        signals.signal(signals.SIGALRM, previous)
        if outer:
            signals.setitimer(signals.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.001))
