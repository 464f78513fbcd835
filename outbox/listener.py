"""PostgreSQL LISTEN on a dedicated autocommit psycopg 3 connection.

A notification is only a wake-up: the worker always re-queries the table, so a lost or
coalesced notification costs at most one poll interval, never an event. Senders notify
only while a worker is armed (see "waking workers" in :mod:`outbox.queries`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.db import connections

from . import queries

if TYPE_CHECKING:
    import psycopg

__all__ = ["Listener", "can_listen"]

logger = logging.getLogger("outbox")


def can_listen(alias: str) -> bool:
    """True if ``alias`` is PostgreSQL and psycopg 3 is installed."""
    if connections[alias].vendor != "postgresql":
        return False
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return True


class Listener:
    """A LISTENing connection built from the Django connection's own parameters."""

    def __init__(self, alias: str, channel: str) -> None:
        import psycopg
        from psycopg import sql

        params: dict[str, Any] = dict(connections[alias].get_connection_params())
        params.pop("cursor_factory", None)
        params["autocommit"] = True
        self.connection = psycopg.connect(**params)
        self.connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        waiting, sending = queries.wake_locks(channel)
        self._waiting = {"class": waiting[0], "key": waiting[1]}
        self._sending = {"class": sending[0], "key": sending[1]}
        self.armed = False
        logger.debug("listening on channel %r of database %r", channel, alias)

    def arm(self) -> bool:
        """Ask senders to notify from now on; True once none is in flight that might not.

        Takes the shared "waiting" lock (kept until :meth:`disarm`), then tests the
        "sending" lock. False means: a transaction that wrote events without notifying is
        still open (or a sender is testing "waiting" this instant); look at the table again
        soon rather than sleep. True means every such transaction has ended: one more
        claim sees its events, and any later sender notifies.
        """
        if not self.armed:
            self.armed = bool(_value(self.connection.execute(queries.ARM, self._waiting)))
            if not self.armed:
                return False
        return bool(_value(self.connection.execute(queries.NO_SENDER_IN_FLIGHT, self._sending)))

    def disarm(self) -> None:
        """Busy again: senders may stop notifying. Does nothing unless armed."""
        if self.armed:
            self.connection.execute(queries.DISARM, self._waiting)
            self.armed = False

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if a notification arrived.

        Notifications already queued are consumed too, so one wake-up answers a burst.
        """
        woke = False
        for _ in self.connection.notifies(timeout=timeout, stop_after=1):
            woke = True
        if woke:
            for _ in self.connection.notifies(timeout=0.0):
                pass
        return woke

    def close(self) -> None:
        """Close the connection, which releases its locks; never raises."""
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
            logger.debug("closing the listener failed", exc_info=True)


def _value(cursor: psycopg.Cursor[Any]) -> Any:
    """The value of a one-column SELECT without FROM (it always returns one row)."""
    row = cursor.fetchone()
    assert row is not None
    return row[0]
