"""The heartbeat: one thread, with its own connection, that keeps the claims in hand leased.

One per worker process (it holds every claim of the worker, at any concurrency) and one per
relayed task. Every ``lease_seconds / 3`` it extends the lease of the rows each claim still
holds (:meth:`outbox.claims.Claim.held`), so that no row is reclaimed while it is still the
runner's, including rows already run and not yet written done.

Once a row in hand has run longer than :data:`HAND_BACK_AFTER` (or a third of the lease, if
shorter), the rest of its batch is no longer held hostage: the heartbeat writes the rows
already run done, hands the unstarted ones back (due now, their attempt undone, for any
worker to take) and from then on extends only the rows in hand. Which rows are still the
runner's is decided under the claim's lock, so no row is both handed back here and started
there. A claim with nothing left in hand (:attr:`~outbox.claims.Claim.settled`) is dropped.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import DatabaseError, connections

from . import queries
from .claims import Claim

__all__ = ["HAND_BACK_AFTER", "Heartbeat"]

logger = logging.getLogger("outbox")

#: Seconds a receiver may run before the unstarted rest of its batch is handed back. Long
#: enough that a healthy batch of quick receivers never pays for it (no write at all), short
#: enough that a receiver which hangs delays the others by about this much.
HAND_BACK_AFTER = 1.0


class Heartbeat:
    """Keeps the leases of the claims given to :meth:`hold`, from its own thread."""

    def __init__(self, database: str, lease_seconds: float, name: str = "outbox-heartbeat") -> None:
        self.database = database
        self.lease_seconds = lease_seconds
        self.hand_back_after = min(HAND_BACK_AFTER, lease_seconds / 3)
        self.name = name
        self._claims: list[Claim] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, claim: Claim) -> None:
        """Keep the rows ``claim`` still holds leased, until it has settled."""
        with self._lock:
            self._claims.append(claim)

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
        owed: list[tuple[Claim, list[int], list[int]]] = []  # handed back, not yet written
        try:
            while not self._stopped.wait(tick):
                with self._lock:
                    claims = self._claims = [c for c in self._claims if not c.settled]
                for claim in claims:
                    handed = claim.hand_back_if_stuck(self.hand_back_after)
                    if handed is not None:
                        owed.append((claim, *handed))
                owed = [entry for entry in owed if not self._write(*entry)]
                if time.monotonic() >= next_extension:
                    next_extension = time.monotonic() + self.lease_seconds / 3
                    for claim in claims:
                        self._extend(claim)
                    for claim, done, rest in owed:
                        self._extend(claim, done + rest)
            for entry in owed:
                self._write(*entry)
        finally:
            connections.close_all()

    def _write(self, claim: Claim, done: list[int], rest: list[int]) -> bool:
        """Write ``done`` done and release ``rest``; False if the database is unavailable."""
        try:
            claim.write_done(done)
            released = claim.release(rest)
        except DatabaseError as exc:
            logger.warning("could not hand back %d events (%s); retrying", len(done) + len(rest), exc)
            connections[claim.database].close()
            return False
        if rest:
            logger.info(
                "a receiver has run over %.1fs: handed back the %d unstarted events of its batch",
                self.hand_back_after,
                released,
            )
        return True

    def _extend(self, claim: Claim, ids: list[int] | None = None) -> None:
        try:
            if ids is None:
                claim.extend(self.lease_seconds)
            elif ids:
                queries.extend_lease(claim.database, claim.token, ids, self.lease_seconds)
        except DatabaseError as exc:
            logger.warning("could not extend the leases of a batch: %s", exc)
            connections[claim.database].close()
