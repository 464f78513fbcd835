"""The worker: claims committed events in batches and calls their receivers.

``python manage.py run_outbox`` is a thin shell over :class:`Worker`. The loop: claim a
batch (one statement), decode it (one query per model for instances), call each receiver,
mark the successes done (one statement) and record each failure with its traceback. A
heartbeat thread extends the lease of the batch in hand, so a slow receiver is never run
twice; a worker that dies leaves rows that any worker reclaims when their lease expires.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal as signals
import socket
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connections
from django.utils import timezone

from . import queries
from .conf import settings
from .exceptions import DispatchError, OutboxError, UnknownReceiver
from .listener import Listener, can_listen
from .registry import get_receiver, get_signal
from .serialization import PayloadDecoder

__all__ = ["ReceiverTimeout", "Worker", "backoff_delay"]

logger = logging.getLogger("outbox")

# Errors that mean "the database went away", after which the worker reconnects.
_CONNECTION_ERRORS = (OperationalError, InterfaceError)


class ReceiverTimeout(OutboxError):
    """A receiver ran longer than its ``timeout``."""


def backoff_delay(attempts: int) -> float:
    """Seconds before retry number ``attempts``: exponential, capped, with jitter.

    The jitter draws from the upper half of the delay, so retries of events that failed
    together spread out without any retrying much sooner than planned.
    """
    delay = min(settings.BACKOFF_MAX_SECONDS, settings.BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0))
    return random.uniform(delay / 2, delay)


class Worker:
    """Drains the outbox of one database.

    ``once=True`` drains everything due now and returns; otherwise it runs until
    :meth:`stop` (or SIGTERM/SIGINT when run from the main thread).
    """

    def __init__(
        self,
        database: str | None = None,
        *,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        lease_seconds: float | None = None,
        listen: bool = True,
        once: bool = False,
    ) -> None:
        self.database = database or settings.database
        self.batch_size = batch_size or settings.BATCH_SIZE
        self.poll_interval = settings.POLL_INTERVAL if poll_interval is None else poll_interval
        self.lease_seconds = lease_seconds or settings.LEASE_SECONDS
        self.listen = listen and can_listen(self.database)
        self.once = once
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = False
        self.processed = 0
        self._listener: Listener | None = None
        self._inflight: tuple[str, list[int]] = ("", [])
        self._heartbeat = threading.Event()
        self._signal_count = 0

    # --- lifecycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop after the receiver in hand."""
        self.stopping = True

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal_count += 1
        if self._signal_count > 1:
            logger.warning("second %s: exiting at once", signals.Signals(signum).name)
            os._exit(1)
        logger.info("%s: finishing the receiver in hand, then exiting", signals.Signals(signum).name)
        self.stop()

    def run(self) -> int:
        """Run until stopped (or, with ``once``, until nothing is due); return events handled."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signals.SIGTERM, signals.SIGINT):
                handlers[signum] = signals.signal(signum, self._on_signal)
        beat = threading.Thread(target=self._beat, name="outbox-heartbeat", daemon=True)
        beat.start()
        logger.info(
            "worker %s on database %r: batch %d, poll %.1fs, lease %.0fs, %s",
            self.name,
            self.database,
            self.batch_size,
            self.poll_interval,
            self.lease_seconds,
            "LISTEN/NOTIFY" if self.listen else "polling only",
        )
        try:
            self._loop()
        finally:
            self._heartbeat.set()
            beat.join(timeout=5)
            if self._listener:
                self._listener.close()
            for signum, handler in handlers.items():
                signals.signal(signum, handler)
        logger.info("worker %s stopped after %d events", self.name, self.processed)
        return self.processed

    def _loop(self) -> None:
        failures = 0
        while not self.stopping:
            try:
                close_old_connections()
                if self.listen and self._listener is None:
                    self._listener = Listener(self.database, settings.NOTIFY_CHANNEL)
                handled = self.run_batch()
                failures = 0
            except _CONNECTION_ERRORS + (_listener_errors()) as exc:
                failures += 1
                pause = min(10.0, 0.5 * 2 ** min(failures, 5))
                logger.warning("database unavailable (%s); reconnecting in %.1fs", exc, pause)
                self._reset_connections()
                self._sleep(pause)
                continue
            if handled:
                continue
            if self.once:
                return
            self._idle()

    def _reset_connections(self) -> None:
        if self._listener:
            self._listener.close()
            self._listener = None
        connections[self.database].close()

    def _idle(self) -> None:
        """Wait for a notification or the poll interval, whichever comes first."""
        deadline = time.monotonic() + self.poll_interval
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Short slices, so SIGTERM is honoured promptly whatever the poll interval.
            if self._listener is not None:
                if self._listener.wait(min(remaining, 0.25)):
                    return
            else:
                time.sleep(min(remaining, 0.1))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def _beat(self) -> None:
        """Heartbeat thread: extend the lease of the batch in hand every LEASE/3 seconds."""
        try:
            while not self._heartbeat.wait(self.lease_seconds / 3):
                token, ids = self._inflight
                if not ids:
                    continue
                try:
                    queries.extend_lease(self.database, token, list(ids), self.lease_seconds)
                except DatabaseError as exc:
                    logger.warning("could not extend the lease of %d events: %s", len(ids), exc)
                    connections[self.database].close()
        finally:
            connections.close_all()

    # --- one batch -------------------------------------------------------------------

    def run_batch(self) -> int:
        """Claim and handle one batch; return how many events were claimed."""
        token, rows = queries.claim(self.database, self.batch_size, self.lease_seconds, self.name)
        if not rows:
            return 0
        ids = [row.id for row in rows]
        # The heartbeat extends every row of the batch until _finish has recorded it:
        # a row already run but not yet marked done must not be reclaimed either.
        self._inflight = (token, ids)
        done: list[int] = []
        started = 0
        try:
            decoder = PayloadDecoder()
            payloads = [_parse(row.payload) for row in rows]
            for payload in payloads:
                decoder.add(payload)
            for row, payload in zip(rows, payloads, strict=True):
                if self.stopping:
                    break
                started += 1
                if self._handle(token, row, payload, decoder):
                    done.append(row.id)
                self.processed += 1
        finally:
            self._finish(token, done, ids[started:])
            self._inflight = (token, [])
        return len(rows)

    def _finish(self, token: str, done: list[int], unstarted: list[int]) -> None:
        """Mark successes done and hand back unstarted rows, retrying through a restart."""
        for attempt in range(5):
            try:
                queries.complete(self.database, token, done)
                queries.release(self.database, token, unstarted)
                return
            except _CONNECTION_ERRORS as exc:
                logger.warning("could not record the batch (%s); retrying", exc)
                connections[self.database].close()
                time.sleep(0.2 * 2**attempt)
        logger.error("gave up recording %d done events; they will run again after their lease", len(done))

    def _handle(self, token: str, row: queries.Claimed, payload: Any, decoder: PayloadDecoder) -> bool:
        """Run one event; True on success. Failures are recorded here."""
        started = time.perf_counter()
        try:
            spec = get_receiver(row.receiver)
            signal = get_signal(row.signal)
            if spec is None or signal is None:
                missing = f"receiver {row.receiver!r}" if spec is None else f"signal {row.signal!r}"
                raise UnknownReceiver(
                    f"{missing} is not registered in this worker process; nothing was imported "
                    f"or called (connect it with outbox.receiver in a module imported at startup, "
                    f"then replay the event)"
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
            self._failed(token, row, exc, started, permanent=True)
            return False
        try:
            _call(spec.func, spec.timeout, signal=signal, sender=sender, **kwargs)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            self._failed(token, row, exc, started, permanent=False)
            return False
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "event %d %s done in %.1f ms (attempt %d)",
                row.id,
                row.receiver,
                (time.perf_counter() - started) * 1000,
                row.attempts,
            )
        return True

    def _failed(
        self, token: str, row: queries.Claimed, exc: BaseException, started: float, permanent: bool
    ) -> None:
        error = f"{type(exc).__qualname__}: {exc}"
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        retry_at = None
        if not permanent and row.attempts < row.max_attempts:
            retry_at = timezone.now() + timedelta(seconds=backoff_delay(row.attempts))
        queries.record_failure(self.database, token, row.id, error[:10000], trace, retry_at)
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


class _Corrupt:
    def __init__(self, error: Exception) -> None:
        self.error = error


def _parse(raw: Any) -> Any:
    if isinstance(raw, (str, bytes, bytearray)):
        try:
            return json.loads(raw)
        except ValueError as exc:
            return _Corrupt(exc)
    return raw


def _listener_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.OperationalError,)


def _call(func: Callable[..., Any], timeout: float | None, **kwargs: Any) -> None:
    """Call a receiver, bounded by ``timeout`` seconds where SIGALRM allows it."""
    if not timeout or threading.current_thread() is not threading.main_thread():
        func(**kwargs)
        return

    def expire(signum: int, frame: Any) -> None:
        raise ReceiverTimeout(f"the receiver ran longer than its timeout of {timeout}s")

    previous = signals.signal(signals.SIGALRM, expire)
    signals.setitimer(signals.ITIMER_REAL, timeout)
    try:
        func(**kwargs)
    finally:
        signals.setitimer(signals.ITIMER_REAL, 0)
        signals.signal(signals.SIGALRM, previous)
