"""Running up to N receivers at once in one worker (``run_outbox --concurrency N``).

:class:`Runner` takes the rows of claims (:meth:`Runner.feed`) one per free slot, N slots in
all. Sync receivers run in a pool of N threads, each with its own Django connections (Django
keeps them per thread; they are recycled between events by Django's rules, see
:func:`recycle_connections`, and closed when the thread ends). Async receivers run as tasks
on one event loop, in a thread of its own, where Django's async ORM works as in any async
code. A slot is taken from the moment a row is started until its outcome is noted, so at
most N receivers, sync and async together, run at once.

Orphans (rows reclaimed after their worker died) run alone, as at concurrency 1: see
:meth:`Runner.feed`.

Successes are written done by the runner's recorder thread, in one statement per claim for
all the rows that succeeded within :data:`outbox.claims.FLUSH_AFTER` (or at the end).
Failures are written by the thread that saw them, fenced on the claim's token as always.

Timeouts. An async receiver is cancelled at its ``timeout`` and its attempt fails with
:class:`~outbox.execution.ReceiverTimeout`. A sync receiver in a thread cannot be
interrupted: at its timeout its attempt is failed, but its row stays held, and its slot
taken, until its thread returns (:mod:`outbox.overdue` says why and how).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, connections

from . import observability, queries
from .claims import FLUSH_AFTER, Claim
from .coroutines import is_async
from .current import enter
from .execution import (
    Prepared,
    ReceiverTimeout,
    begin_alone,
    call_receiver,
    decode_batch,
    prepare,
    record_failure,
)
from .heartbeat import HAND_BACK_AFTER
from .overdue import Overdue
from .registry import get_receiver

__all__ = ["Runner", "recycle_connections"]

logger = logging.getLogger("outbox")


_Job = tuple[Callable[..., None], tuple[Any, ...]]


class Runner:
    """Runs the rows of claims, up to ``concurrency`` receivers at once."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._cond = threading.Condition()
        self._busy = 0  # slots taken
        self._claims: list[Claim] = []  # fed, not yet finished
        self._running: set[Overdue] = set()  # sync receivers in threads
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._stopping = False
        self._closed = threading.Event()
        self._recorder: threading.Thread | None = None

    # --- the worker's side -----------------------------------------------------------

    def feed(self, claim: Claim, should_stop: Callable[[], bool]) -> int:
        """Start the claim's rows, one per free slot, until all are started, the rest is
        handed back or ``should_stop()``; then wait for a free slot (so that the worker
        claims again only with room). Return how many rows were started."""
        self._start()
        try:
            decoder, payloads = decode_batch(claim.rows)  # model rows fetched here, once
        except BaseException:
            # The database went away: nothing was started; hand the batch back if it can,
            # else its lease expires (the heartbeat drops a claim with nothing in hand).
            _, rest = claim.hand_back()
            try:
                claim.release(rest)
            except DatabaseError:
                pass
            raise
        with self._cond:
            self._claims.append(claim)
        fed = 0
        while True:
            ahead = claim.peek()
            # An orphan (reclaimed after its worker died) runs alone, as at concurrency 1:
            # its attempt is counted as it starts, so that if it kills this worker too the
            # reclaim charges it, and it alone. Another orphan in hand beside it would be
            # charged with it, and a row that killed the worker beside it would charge it.
            # So it waits for the receivers in hand to return, for up to HAND_BACK_AFTER: a
            # receiver that runs longer (slow, or hung for good) must not hold it hostage.
            orphan = ahead is not None and ahead.alone
            if orphan and not self._wait(self._idle, should_stop, timeout=HAND_BACK_AFTER):
                break
            if not self._reserve(should_stop):
                break
            row = claim.next()
            if row is None:  # all started, or handed back meanwhile
                self._free()
                break
            if not row.alone and _is_async_receiver(row.receiver):
                # Straight to the event loop: a hop through a pool thread would add a thread
                # switch (up to Python's 5 ms switch interval on a busy machine) per event.
                self._run_async(claim, row, payloads[row.id], decoder)
            else:
                self._jobs.put((self._run, (claim, row, payloads[row.id], decoder)))
            fed += 1
            # Nothing starts beside it until it returns, or has run so long that the
            # heartbeat handed the rest of its claim back (HAND_BACK_AFTER): a hung orphan
            # must not stop the other slots for ever.
            if row.alone and not self._wait(lambda: self._idle() or claim.closed, should_stop):
                break
        self._wait(lambda: self._busy < self.concurrency, should_stop)
        return fed

    def busy(self) -> bool:
        """True while any receiver is in hand."""
        return self._busy > 0

    def stop(self) -> None:
        """Start nothing more."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def close(self) -> None:
        """Hand back what was not started, wait for the receivers in hand (each bounded by its
        timeout), record everything and stop the threads."""
        self.stop()
        if self._recorder is None:
            return
        for claim in list(self._claims):
            done, rest = claim.hand_back()
            _retrying(functools.partial(claim.write_done, done), "record done events")
            _retrying(functools.partial(claim.release, rest), "hand back unstarted events")
        # Overdue sync receivers hold their slots until they return, which may be never.
        with self._cond:
            while self._busy > sum(job.state == "overdue" for job in self._running):
                self._cond.wait(0.1)
        for job in list(self._running):
            if job.close():
                job.claim.ran(job.row.id, False)
        self._closed.set()
        self._recorder.join(timeout=30)
        for claim in list(self._claims):
            _retrying(claim.finish, "record the last batch")
        for _ in self._threads:
            self._jobs.put(None)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=5)  # type: ignore[union-attr]

    # --- slots -----------------------------------------------------------------------

    def _reserve(self, should_stop: Callable[[], bool]) -> bool:
        with self._cond:
            while self._busy >= self.concurrency:
                if self._stopping or should_stop():
                    return False
                self._cond.wait(0.1)
            if self._stopping or should_stop():
                return False
            self._busy += 1
            return True

    def _free(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def _wait(
        self,
        predicate: Callable[[], bool],
        should_stop: Callable[[], bool] = lambda: False,
        timeout: float | None = None,
    ) -> bool:
        """Wait until ``predicate()``, or for ``timeout`` seconds; False if stopping first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not predicate() and (deadline is None or time.monotonic() < deadline):
                if should_stop() or self._stopping:
                    return False
                self._cond.wait(0.1)
            return True

    def _idle(self) -> bool:
        return self._busy == 0

    def _noted(self, claim: Claim, row: queries.Claimed, succeeded: bool, recorded: bool = False) -> None:
        """A row's outcome is known (and, unless a pending success, written): free its slot."""
        claim.ran(row.id, succeeded, recorded)
        if succeeded:
            observability.done(row)
        self._free()

    # --- threads ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._recorder is not None:
            return
        for number in range(self.concurrency):
            thread = threading.Thread(target=self._serve, name=f"outbox-receiver-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._recorder = threading.Thread(target=self._record, name="outbox-recorder", daemon=True)
        self._recorder.start()

    def _serve(self) -> None:
        """A pool thread: run jobs, recycling its connections between them."""
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                func, args = job
                try:
                    func(*args)
                except Exception:
                    # A database error writing an outcome: the row stays leased, and is
                    # reclaimed when its lease expires. The slot must not leak.
                    logger.exception("could not record an event's outcome")
                    claim, row = args[0], args[1]
                    self._noted(claim, row, False, recorded=True)
                recycle_connections()
        finally:
            connections.close_all()

    def _record(self) -> None:
        """The recorder: every FLUSH_AFTER, fail sync receivers past their timeout, write
        the successes of each claim in one statement, and finish settled claims."""
        try:
            while not self._closed.wait(FLUSH_AFTER):
                now = time.monotonic()
                for job in list(self._running):
                    if job.due(now):
                        job.expire()
                for claim in list(self._claims):
                    try:
                        claim.complete(older_than=FLUSH_AFTER)
                        if claim.settled:
                            claim.finish()
                            with self._cond:
                                self._claims.remove(claim)
                    except DatabaseError as exc:
                        logger.warning("could not record a batch (%s); retrying", exc)
                        connections[claim.database].close()
                recycle_connections()
        finally:
            connections.close_all()

    # --- sync receivers --------------------------------------------------------------

    def _run(self, claim: Claim, row: queries.Claimed, payload: Any, decoder: Any) -> None:
        started = time.perf_counter()
        recorded = False
        if row.alone:
            alone = begin_alone(claim, row)
            if alone is None:
                self._noted(claim, row, False, recorded=True)
                return
            row, recorded = alone, True
        ready = prepare(claim, row, payload, decoder)
        if ready is None:
            self._noted(claim, row, False, recorded=True)
            return
        if is_async(ready.spec.func):
            self._start_async(claim, row, ready, started)
            return
        job = Overdue(claim, row, ready.spec.timeout, started)
        with self._cond:
            self._running.add(job)
        try:
            failure = call_receiver(ready, before_done=job.finishing)
        finally:
            with self._cond:
                self._running.discard(job)
            state = job.returned()  # writes the outcome of an attempt failed at its timeout
        if state == "closed":  # the worker stopped meanwhile and wrote the planned retry
            return
        if state == "overdue":
            self._noted(claim, row, False, recorded=True)
        elif failure is not None:
            record_failure(claim, row, failure, started, permanent=False)
            self._noted(claim, row, False, recorded=True)
        elif ready.written:  # an atomic receiver: written done in its own transaction
            self._noted(claim, row, True, recorded=True)
        elif recorded:  # an orphan, run alone: written done at once
            claim.write_done([row.id])
            self._noted(claim, row, True, recorded=True)
        else:
            self._noted(claim, row, True)

    # --- async receivers -------------------------------------------------------------

    def _run_async(self, claim: Claim, row: queries.Claimed, payload: Any, decoder: Any) -> None:
        started = time.perf_counter()
        ready = prepare(claim, row, payload, decoder)  # decoding queries nothing: prefetched
        if ready is None:
            self._noted(claim, row, False, recorded=True)
            return
        self._start_async(claim, row, ready, started)

    def _start_async(self, claim: Claim, row: queries.Claimed, ready: Prepared, started: float) -> None:
        with self._cond:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(
                    target=self._loop.run_forever, name="outbox-event-loop", daemon=True
                )
                self._loop_thread.start()
            loop = self._loop
        asyncio.run_coroutine_threadsafe(self._await(claim, row, ready, started), loop)

    async def _await(self, claim: Claim, row: queries.Claimed, ready: Prepared, started: float) -> None:
        """Run an async receiver as a task, cancelled at its timeout; note its outcome."""
        timeout = ready.spec.timeout
        failure: BaseException | None = None
        # This task runs in a context of its own (a copy, taken when it was created), and
        # the receiver's inner task copies it in turn: each sees its own event only.
        enter(ready.row)
        watch = observability.watching(ready)
        watch.begin()  # its span is current in this task only
        try:
            coroutine = ready.spec.func(signal=ready.signal, sender=ready.sender, **ready.kwargs)
            if not timeout:
                await coroutine  # no timer to race: no task and no wait of its own
            else:
                # Guarded: a task re-raises SystemExit and KeyboardInterrupt through the
                # loop, which would stop it; here they are the receiver's failure.
                task = asyncio.ensure_future(_guarded(coroutine))
                finished, _ = await asyncio.wait({task}, timeout=timeout)
                if finished:
                    failure = task.result()
                else:
                    task.cancel()
                    await asyncio.wait({task})
                    failure = ReceiverTimeout(f"the receiver ran over its timeout of {timeout}s: cancelled")
        except BaseException as exc:  # noqa: BLE001 - calling the receiver raised: its failure
            failure = exc
        watch.end(failure)
        if failure is None and not row.alone:
            self._noted(claim, row, True)
            return
        # Writing takes a database connection: a pool thread does it (one is always free,
        # since this receiver holds a slot and no thread).
        self._jobs.put((self._record_async, (claim, row, failure, started)))

    def _record_async(
        self, claim: Claim, row: queries.Claimed, failure: BaseException | None, started: float
    ) -> None:
        if failure is None:  # an orphan, run alone: written done at once
            claim.write_done([row.id])
            self._noted(claim, row, True, recorded=True)
            return
        record_failure(claim, row, failure, started, permanent=False)
        self._noted(claim, row, False, recorded=True)


def _is_async_receiver(path: str) -> bool:
    spec = get_receiver(path)
    return spec is not None and is_async(spec.func)


async def _guarded(coroutine: Any) -> BaseException | None:
    """Await ``coroutine``; return what it raised, None if it returned."""
    try:
        await coroutine
    except BaseException as exc:  # noqa: BLE001 - the receiver's failure, whatever it is
        return exc
    return None


def recycle_connections() -> None:
    """Django's between-requests connection rule, adapted to a long-running worker.

    Broken connections are dropped and a positive ``CONN_MAX_AGE`` is honoured, but with
    Django's default of 0 the connections stay open: closing them as a request would
    makes every event reconnect before it can run, adding connection set-up to its latency.
    Each thread applies it to its own connections.
    """
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        if connection.errors_occurred:
            if not connection.is_usable():
                connection.close()
                continue
            connection.errors_occurred = False
        max_age = connection.settings_dict.get("CONN_MAX_AGE")
        if max_age and connection.close_at is not None and time.monotonic() >= connection.close_at:
            connection.close()


def _retrying(write: Callable[[], Any], what: str) -> None:
    """Run a write at shutdown, through a database restart (five tries)."""
    for attempt in range(5):
        try:
            write()
            return
        except DatabaseError as exc:
            logger.warning("could not %s (%s); retrying", what, exc)
            connections.close_all()
            time.sleep(0.2 * 2**attempt)
    logger.error("gave up trying to %s; its events run again after their lease", what)
