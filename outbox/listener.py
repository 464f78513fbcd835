"""PostgreSQL LISTEN on a dedicated autocommit psycopg 3 connection.

A notification is only a wake-up: the worker always re-queries the table, so a lost or
coalesced notification costs at most one poll interval, never an event.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import connections

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
        logger.debug("listening on channel %r of database %r", channel, alias)

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
        """Close the connection; never raises."""
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
            logger.debug("closing the listener failed", exc_info=True)
