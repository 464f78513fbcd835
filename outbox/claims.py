"""A claimed batch, and the one owner of its fenced writes.

:func:`claim` claims a batch (one statement, :func:`outbox.queries.claim`) and returns a
:class:`Claim`. Whoever runs the rows (the sequential loop of :mod:`outbox.execution`, the
threads of :mod:`outbox.concurrent`, a relayed task) takes them from the claim with
:meth:`Claim.next`, reports each with :meth:`Claim.ran`, and the claim writes: successes in
one statement for many rows (:meth:`Claim.complete`), failures one by one
(:meth:`Claim.fail`), unstarted rows handed back (:meth:`Claim.release`), leases of the rows
in hand (:meth:`Claim.extend`, from the heartbeat). Every write is fenced on the claim's
token: a row whose lease was lost and taken by another worker is left to that worker.

Which rows are still the claim's is decided under one lock, so a row is either started or
handed back, never both, and each success is written done once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from django.db import InterfaceError, OperationalError, connections

from . import queries

__all__ = ["FLUSH_AFTER", "Claim", "claim", "take"]

logger = logging.getLogger("outbox")

#: Longest a success waits to be written done while others may join it in one statement.
FLUSH_AFTER = 0.025

_CONNECTION_ERRORS = (OperationalError, InterfaceError)


class Claim:
    """The rows claimed under ``token`` on ``database``, and what became of each."""

    def __init__(
        self,
        database: str,
        token: str,
        rows: Sequence[queries.Claimed],
        position: queries.Position | None = None,
    ) -> None:
        self.database = database
        self.token = token
        self.rows = list(rows)
        #: Where the earliest row stood in the due index (PostgreSQL): see queries.claim_after.
        self.position = position
        #: How many rows were started, and how many of those succeeded.
        self.started = 0
        self.succeeded = 0
        self._next = 0  # index of the first unstarted row
        self._in_hand: dict[int, float] = {}  # started, not yet ran(): id -> monotonic start
        self._ran: dict[int, tuple[float, float]] = {}  # _done's (start, end), monotonic
        self._done: list[int] = []  # succeeded, not yet written done
        self._done_since = 0.0  # when the oldest of _done succeeded
        self._closed = False  # handed back: start nothing more
        self._lock = threading.Lock()
        #: Claimed ahead (outbox.worker): the claim whose batch runs while this one waits,
        #: None once this one runs. If a receiver of that batch runs long, this one is
        #: handed back too (:meth:`hand_back_if_stuck`), not held hostage behind it.
        self.behind: Claim | None = None

    def __len__(self) -> int:
        return len(self.rows)

    # --- per-row state, under the lock ---------------------------------------------------

    def next(self) -> queries.Claimed | None:
        """Take the next unstarted row in hand; None once all are started or handed back."""
        with self._lock:
            if self._closed or self._next >= len(self.rows):
                return None
            row = self.rows[self._next]
            self._next += 1
            self.started += 1
            self._in_hand[row.id] = time.monotonic()
            return row

    def peek(self) -> queries.Claimed | None:
        """The row :meth:`next` would take, left unstarted; None as :meth:`next`."""
        with self._lock:
            if self._closed or self._next >= len(self.rows):
                return None
            return self.rows[self._next]

    def ran(self, event_id: int, succeeded: bool, recorded: bool = False) -> None:
        """The row in hand has run; a success not ``recorded`` yet is to be written done."""
        with self._lock:
            start = self._in_hand.pop(event_id, None)
            if succeeded:
                self.succeeded += 1
                if not recorded:
                    if not self._done:
                        self._done_since = time.monotonic()
                    self._done.append(event_id)
                    if start is not None:
                        self._ran[event_id] = (start, time.monotonic())

    def in_hand(self) -> list[int]:
        """The rows started and not yet reported by :meth:`ran`."""
        with self._lock:
            return list(self._in_hand)

    def held(self) -> list[int]:
        """The rows whose lease must be kept: the whole batch until it is handed back (rows
        already run too, until they are written done), then the rows in hand."""
        with self._lock:
            if not self._closed:
                return [row.id for row in self.rows]
            return [*self._in_hand, *self._done]

    @property
    def closed(self) -> bool:
        """True once the claim was handed back (or over): it starts nothing more."""
        with self._lock:
            return self._closed

    @property
    def settled(self) -> bool:
        """True when no row is in hand and none is left to start."""
        with self._lock:
            return not self._in_hand and (self._closed or self._next >= len(self.rows))

    def take_done(self, older_than: float = 0.0) -> list[int]:
        """The successes not yet written, if the oldest is ``older_than`` seconds old; each
        is returned once, to one caller, who writes it done."""
        with self._lock:
            if not self._done or time.monotonic() - self._done_since < older_than:
                return []
            done, self._done = self._done, []
            return done

    def hand_back(self) -> tuple[list[int], list[int]]:
        """Start nothing more; return (successes not yet written, rows never started)."""
        with self._lock:
            return self._hand_back()

    def hand_back_if_stuck(self, seconds: float) -> tuple[list[int], list[int]] | None:
        """:meth:`hand_back`, once a row in hand has run ``seconds`` (for a claim made
        ahead and not started yet: a row of the batch it waits :attr:`behind`); else None."""
        behind = self.behind
        behind_stuck = behind is not None and behind.running_longer_than(seconds)
        with self._lock:
            if self._closed:
                return None
            if not self._in_hand:
                return self._hand_back() if behind_stuck and self._next == 0 else None
            return self._hand_back() if self._ran_longer_than(seconds) else None

    def running_longer_than(self, seconds: float) -> bool:
        """Whether a row in hand has run ``seconds``."""
        with self._lock:
            return self._ran_longer_than(seconds)

    def _ran_longer_than(self, seconds: float) -> bool:
        return bool(self._in_hand) and time.monotonic() - min(self._in_hand.values()) >= seconds

    def _hand_back(self) -> tuple[list[int], list[int]]:
        done, self._done = self._done, []
        rest = [] if self._closed else [row.id for row in self.rows[self._next :]]
        self._next = len(self.rows)
        self._closed = True
        return done, rest

    # --- fenced writes -------------------------------------------------------------------

    def complete(self, older_than: float = 0.0) -> int:
        """Write the successes not yet written done, in one statement (only if the oldest
        waited ``older_than`` seconds: successes that come close together share it)."""
        done = self.take_done(older_than)
        if not done:
            return 0
        try:
            return self.write_done(done)
        except BaseException:
            with self._lock:  # still owed: written by the next call
                self._done[:0] = done
            raise

    def write_done(self, done: Sequence[int]) -> int:
        """Write rows done in one statement (rows this caller took: see :meth:`take_done`)."""
        if not done:
            return 0
        written = queries.complete(self.database, self.token, done, self._timings(done))
        with self._lock:
            for event_id in done:
                self._ran.pop(event_id, None)
        logger.debug("wrote %d events done in one statement", len(done))
        return written

    def _timings(self, ids: Sequence[int]) -> list[tuple[float | None, float]]:
        """(seconds since each started, or None; seconds since it returned) for
        :func:`outbox.queries.complete`: a row still in hand returns now."""
        now = time.monotonic()
        with self._lock:
            timings: list[tuple[float | None, float]] = []
            for event_id in ids:
                start, end = self._ran.get(event_id) or (self._in_hand.get(event_id), now)
                timings.append((None if start is None else now - start, now - end))
            return timings

    def fail(self, event_id: int, error: str, traceback: str, retry_in: float | None) -> int:
        """Record a failed attempt: pending again in ``retry_in`` seconds, or failed (None)."""
        ((ran_for, _),) = self._timings([event_id])
        return queries.record_failure(
            self.database, self.token, event_id, error, traceback, retry_in, ran_for
        )

    def overdue(self, event_id: int, error: str, traceback: str) -> int:
        """Record the error of a receiver past its timeout that still runs (its row stays
        running and leased to this claim: see :mod:`outbox.concurrent`)."""
        return queries.mark_overdue(self.database, self.token, event_id, error, traceback)

    def release(self, ids: Sequence[int]) -> int:
        """Hand rows never started back: due now, their attempt undone."""
        return queries.release(self.database, self.token, ids)

    def extend(self, lease_seconds: float) -> int:
        """Push the lease of the rows still held ``lease_seconds`` into the future."""
        ids = self.held()
        return queries.extend_lease(self.database, self.token, ids, lease_seconds) if ids else 0

    def run_alone(self, event_id: int) -> int | None:
        """Count the attempt of an orphan about to run alone (see queries.run_alone)."""
        return queries.run_alone(self.database, self.token, event_id)

    def hand_over(self) -> None:
        """The rows now belong to someone else (a relayed task): start nothing, write
        nothing; the heartbeat stops extending them."""
        with self._lock:
            self._next, self._closed = len(self.rows), True
            self._in_hand.clear()
            self._done = []
            self._ran.clear()

    def finish(self, defer_done: bool = False) -> int:
        """Write what is owed: successes done, unstarted rows released. Retried through a
        database restart; returns how many rows were started.

        ``defer_done``: leave the successes owed (:meth:`take_done`), for the worker's next
        claim to write in its own statement (see :func:`claim`).

        The caller is done with the claim: a row still in hand (its runner raised before
        reporting it) is left to its lease, and the heartbeat stops extending it."""
        with self._lock:
            self._in_hand.clear()
        done, rest = self.hand_back()
        if defer_done and done:
            with self._lock:
                self._done[:0] = done
            done = []
        for attempt in range(5):
            try:
                if done:
                    self.write_done(done)
                    done = []
                self.release(rest)
                return self.started
            except _CONNECTION_ERRORS as exc:
                logger.warning("could not record the batch (%s); retrying", exc)
                connections[self.database].close()
                time.sleep(0.2 * 2**attempt)
        logger.error("gave up recording %d done events; they will run again after their lease", len(done))
        return self.started


def claim(
    alias: str,
    batch_size: int,
    lease_seconds: float,
    worker: str,
    *,
    queues: Sequence[str] | None = None,
    settle: Claim | None = None,
    after: queries.Position | None = None,
) -> Claim:
    """Claim up to ``batch_size`` due events on ``alias``, of ``queues`` (None: every queue;
    see :func:`outbox.queries.claim`), walking the due index from ``after`` (None: its start;
    see :func:`outbox.queries.claim_after`). ``settle``: a previous claim on ``alias`` whose
    successes are still owed; they are written done by the same statement (on PostgreSQL)
    and stay owed if it fails."""
    done = settle.take_done() if settle is not None else []
    try:
        token, rows, position = queries.claim_after(
            alias,
            batch_size,
            lease_seconds,
            worker,
            queues=queues,
            done=(settle.token, done, settle._timings(done)) if settle is not None and done else None,
            after=after,
        )
    except BaseException:
        if settle is not None and done:
            with settle._lock:  # still owed: written by the next claim
                settle._done[:0] = done
        raise
    if settle is not None and done:
        with settle._lock:
            for event_id in done:
                settle._ran.pop(event_id, None)
        logger.debug("wrote %d events done with the next claim", len(done))
    return Claim(alias, token, rows, position)


def take(alias: str, ticket: str, ids: Sequence[int], lease_seconds: float, worker: str) -> Claim:
    """Take over relayed rows still held by ``ticket`` (see :func:`outbox.queries.take`)."""
    token, rows = queries.take(alias, ticket, ids, lease_seconds, worker)
    return Claim(alias, token, rows)
