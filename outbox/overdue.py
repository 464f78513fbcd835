"""Sync receivers past their timeout, in threads that cannot be interrupted.

At concurrency 1 a receiver's ``timeout=`` is enforced by SIGALRM, which only reaches the
main thread. In the threads of :class:`outbox.concurrent.Runner` nothing can stop a sync
receiver, so the runner watches each (:class:`Overdue`), and at its timeout:

- its attempt is failed at once: the ``ReceiverTimeout`` is stored on the row and a retry is
  planned by the usual backoff (or none, on its last attempt), and the worker logs a warning;
- but the row stays ``running``, leased to this worker and marked overdue (``outbox_status``
  counts such rows), because its receiver still runs: a retry started now would run the event
  twice at once. The heartbeat keeps extending it;
- when the thread returns, whatever it returns, the attempt's outcome is written: pending at
  the planned retry time, or ``failed``. Its result is not trusted: it came after the timeout,
  as a SIGALRM would have cut it at concurrency 1;
- its slot stays taken until then, so stuck threads never outnumber N and never starve the
  other events of their slots unnoticed: the other receivers run in the remaining slots, the
  unstarted rest of the batch is handed back to other workers once a receiver in hand runs
  long (:data:`outbox.heartbeat.HAND_BACK_AFTER`), and a worker whose N slots are all stuck
  claims nothing more until one returns;
- if the worker stops (SIGTERM) while such a receiver still runs, the planned retry is written
  and the process exits, which ends the thread: the event never runs twice at once.

Why this and not the alternatives: releasing the row at its timeout (as SIGALRM's failure
does) would let any worker retry it while the first run still goes on, twice at once;
starting a fresh thread in its place would let stuck threads grow without bound; waiting
without failing it would hide the timeout from the operator and make ``timeout=`` mean
nothing. Python cannot kill a thread, so holding the row and the slot is the one choice that
keeps all three promises; the operator sees the stuck receiver in the log and in
``outbox_status``, and a receiver that may block for ever belongs in ``async def`` (which is
cancelled) or needs its own I/O timeouts.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import DatabaseError

from . import queries
from .claims import Claim
from .execution import ReceiverTimeout, backoff_delay, record_failure

__all__ = ["Overdue"]

logger = logging.getLogger("outbox")


class Overdue:
    """A sync receiver running in a pool thread, watched for its timeout.

    Its ``state`` goes from "running" to "overdue" (past its timeout: :meth:`expire`) and to
    "closed" once its thread returned or the worker stopped (:meth:`returned`,
    :meth:`close`): whichever comes first writes the attempt's outcome, under ``lock``. An
    ``atomic=True`` receiver that returns in time goes to "finishing" before it commits
    (:meth:`finishing`), and is never failed after that.
    """

    __slots__ = ("claim", "deadline", "lock", "retry_at", "row", "started", "state", "timeout")

    def __init__(self, claim: Claim, row: queries.Claimed, timeout: float | None, started: float) -> None:
        self.claim, self.row, self.timeout, self.started = claim, row, timeout, started
        self.deadline = time.monotonic() + timeout if timeout else None
        self.state = "running"
        self.retry_at: float | None = None  # the planned retry of an overdue attempt
        self.lock = threading.Lock()

    def due(self, now: float) -> bool:
        """True if it runs past its timeout and has not been failed yet."""
        return self.deadline is not None and self.state == "running" and now >= self.deadline

    def expire(self) -> None:
        """Past its timeout: fail its attempt now, keep its row (see the module docstring)."""
        with self.lock:
            if self.state != "running":
                return
            self.state = "overdue"
        row = self.row
        if row.attempts < row.max_attempts:
            self.retry_at = time.monotonic() + backoff_delay(row.attempts)
        error = ReceiverTimeout(
            f"the receiver ran longer than its timeout of {self.timeout}s; its thread cannot be "
            f"interrupted, so the event stays held by this worker until it returns"
        )
        logger.warning(
            "event %d %s ran past its timeout of %ss in a thread: failed (attempt %d/%d), %s; "
            "held until the receiver returns",
            row.id,
            row.receiver,
            self.timeout,
            row.attempts,
            row.max_attempts,
            "retry planned" if self.retry_at is not None else "no attempt left",
        )
        try:
            record_failure(self.claim, row, error, self.started, permanent=False, overdue=True)
        except DatabaseError as exc:
            logger.warning("could not mark event %d overdue: %s", row.id, exc)

    def finishing(self) -> None:
        """An ``atomic=True`` receiver returned and is about to commit its event done: raise
        :class:`ReceiverTimeout` (rolling its writes back) if its attempt was already failed
        at its timeout, else stop the watch, so that it cannot be failed after it commits."""
        with self.lock:
            if self.state != "running":
                raise ReceiverTimeout(
                    f"the receiver returned after its timeout of {self.timeout}s, when its attempt "
                    f"was already failed; its transaction was rolled back"
                )
            self.state = "finishing"

    def returned(self) -> str:
        """Its thread returned; return the state it had ("running", "overdue" or "closed").
        An overdue attempt's outcome is written here."""
        with self.lock:
            state, self.state = self.state, "closed"
        if state == "overdue":
            row = self.row
            logger.warning(
                "event %d %s: the receiver returned %.1fs after its timeout; its attempt stays failed",
                row.id,
                row.receiver,
                time.perf_counter() - self.started - (self.timeout or 0),
            )
            self.write()
        return state

    def close(self) -> bool:
        """At shutdown: write an overdue attempt's planned retry (the process exits next,
        which ends its thread); True if it was overdue."""
        with self.lock:
            if self.state != "overdue":
                return False
            self.state = "closed"
        self.write()
        return True

    def write(self) -> None:
        """Write an overdue attempt's outcome: the planned retry, or failed for good."""
        error = ReceiverTimeout(f"the receiver ran longer than its timeout of {self.timeout}s")
        retry_in = None if self.retry_at is None else max(self.retry_at - time.monotonic(), 0.0)
        record_failure(
            self.claim, self.row, error, self.started, permanent=retry_in is None, retry_in=retry_in
        )
