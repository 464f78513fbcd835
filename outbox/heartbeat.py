"""The heartbeat: a thread, with its own connection, that keeps the rows in hand leased.

One per worker, and one per relayed task. While the batch runs it extends the lease of
every row of it every ``LEASE_SECONDS / 3``, so that no row is reclaimed while it is still
the runner's, including rows already run and not yet recorded done.

Once the receiver in hand has run longer than :data:`HAND_BACK_AFTER` (or a third of the
lease, if shorter), the rest of the batch is no longer held hostage: the heartbeat marks
the rows already run done, hands the unstarted ones back (due now, their attempt undone,
for any worker to take) and from then on extends only the row in hand. Which rows are
still the runner's is decided under the lock of :class:`outbox.execution.Outcome`, so no
row is both handed back here and started there.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import DatabaseError, connections

from . import queries
from .execution import Outcome

__all__ = ["HAND_BACK_AFTER", "Heartbeat"]

logger = logging.getLogger("outbox")

#: Seconds a receiver may run before the unstarted rest of its batch is handed back. Long
#: enough that a healthy batch of quick receivers never pays for it (no write at all), short
#: enough that a receiver which hangs delays the others by about this much.
HAND_BACK_AFTER = 1.0


class Heartbeat:
    """Keeps the lease of the batch given to :meth:`hold`, from its own thread."""

    def __init__(self, database: str, lease_seconds: float, name: str = "outbox-heartbeat") -> None:
        self.database = database
        self.lease_seconds = lease_seconds
        self.hand_back_after = min(HAND_BACK_AFTER, lease_seconds / 3)
        self.name = name
        self._held: tuple[str, Outcome] | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, token: str, outcome: Outcome | None) -> None:
        """Keep the rows ``outcome`` still holds under ``token`` leased (None: nothing)."""
        self._held = None if outcome is None else (token, outcome)

    def start(self) -> None:
        """Start the thread."""
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, after it has written what it owes."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # Woken often enough to notice a long receiver promptly; this costs no query.
        tick = min(self.lease_seconds / 3, self.hand_back_after / 4)
        next_extension = time.monotonic() + self.lease_seconds / 3
        owed: list[tuple[str, list[int], list[int]]] = []  # handed back, not yet written
        try:
            while not self._stopped.wait(tick):
                held = self._held
                if held is not None:
                    handed = held[1].hand_back_if_stuck(self.hand_back_after)
                    if handed is not None:
                        owed.append((held[0], *handed))
                owed = [entry for entry in owed if not self._write(*entry)]
                if time.monotonic() >= next_extension:
                    next_extension = time.monotonic() + self.lease_seconds / 3
                    if held is not None:
                        self._extend(held[0], held[1].held())
                    for token, done, rest in owed:
                        self._extend(token, done + rest)
            for entry in owed:
                self._write(*entry)
        finally:
            connections.close_all()

    def _write(self, token: str, done: list[int], rest: list[int]) -> bool:
        """Mark ``done`` done and release ``rest``; False if the database is unavailable."""
        try:
            queries.complete(self.database, token, done)
            released = queries.release(self.database, token, rest)
        except DatabaseError as exc:
            logger.warning("could not hand back %d events (%s); retrying", len(done) + len(rest), exc)
            connections[self.database].close()
            return False
        if rest:
            logger.info(
                "a receiver has run over %.1fs: handed back the %d unstarted events of its batch",
                self.hand_back_after,
                released,
            )
        return True

    def _extend(self, token: str, ids: list[int]) -> None:
        if not ids:
            return
        try:
            queries.extend_lease(self.database, token, ids, self.lease_seconds)
        except DatabaseError as exc:
            logger.warning("could not extend the lease of %d events: %s", len(ids), exc)
            connections[self.database].close()
