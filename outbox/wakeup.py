"""Waking idle workers on PostgreSQL: the senders' NOTIFY and the workers' LISTEN.

A notification is only a wake-up: the worker always re-queries the table, so a lost or
coalesced notification costs at most one poll interval, never an event.

NOTIFY is not free either: PostgreSQL serializes the commits of all notifying
transactions on one lock, which costs concurrent senders. So a transaction notifies only
when a worker may be asleep waiting for it, and two advisory locks per channel
(:func:`wake_locks`) make that decision safe:

- "waiting": a worker holds it in shared mode on its LISTEN connection from the moment
  it means to sleep until it finds work again (:meth:`Listener.arm`, :meth:`Listener.disarm`).
- "sending": each transaction that writes events holds it in shared mode from its first
  event to its end (transaction-level, so PostgreSQL releases it at commit or rollback).

The sender's half: a transaction's first event takes "sending", then tests "waiting" with
a momentary exclusive try-lock: if that fails, a worker waits, and the statement notifies.
Both happen inside the INSERT that writes the event (:func:`notify_expression`, which
:func:`outbox.queries.insert_events` puts in the first row), so deciding costs no round
trip; :func:`first_send` and :func:`decided` keep the decision to once per transaction.

The worker's half: a worker about to sleep takes "waiting", then tests "sending" the same
way (:meth:`Listener.arm`): if that fails, a transaction that may have decided not to
notify is still open, so the worker looks again shortly instead of sleeping.

Either the sender sees the worker waiting and notifies, or the worker sees the sender and
does not sleep through its commit.
"""

from __future__ import annotations

import logging
import zlib
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from .conf import settings

if TYPE_CHECKING:
    import psycopg

__all__ = ["Listener", "can_listen", "decided", "first_send", "notify_expression", "wake_locks"]

logger = logging.getLogger("outbox")

_WAITING, _SENDING = 0x6F627877, 0x6F627873  # advisory lock class ids: "obxw" and "obxs"


def wake_locks(channel: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ("waiting", "sending") advisory lock keys, as (class id, key), of ``channel``."""
    key = zlib.crc32(channel.encode()) - 2**31  # a signed 32-bit integer
    return (_WAITING, key), (_SENDING, key)


# --- the sender's half -------------------------------------------------------------------


def notify_expression(pg: Any) -> str:
    """An SQL expression worth ``''`` that takes "sending" and NOTIFYs if a worker waits,
    for psycopg connection ``pg``; CASE fixes the order in which its lock functions run."""
    channel = settings.NOTIFY_CHANNEL
    expression = _expressions.get(channel)
    if expression is None:
        from psycopg import sql

        (wclass, key), (sclass, _) = wake_locks(channel)
        expression = _expressions[channel] = (
            f"CASE WHEN CASE WHEN NOT pg_try_advisory_xact_lock_shared({sclass}, {key}) THEN true "
            f"WHEN pg_try_advisory_lock({wclass}, {key}) THEN NOT pg_advisory_unlock({wclass}, {key}) "
            f"ELSE true END THEN pg_notify({sql.Literal(channel).as_string(pg)}, '')::text ELSE '' END"
        )
    return expression


_expressions: dict[str, str] = {}


def first_send(connection: BaseDatabaseWrapper) -> bool:
    """True if a send on ``connection`` is the first of its transaction since it decided
    whether to notify (or in autocommit, its own transaction): its INSERT must decide."""
    return not (
        connection.in_atomic_block and any(entry[1] is _decided_marker for entry in connection.run_on_commit)
    )


def decided(connection: BaseDatabaseWrapper) -> None:
    """Note that the open transaction on ``connection`` has decided (see :func:`first_send`)."""
    if connection.in_atomic_block:
        connection.on_commit(_decided_marker)


def _decided_marker() -> None:
    """Registered with on_commit once per transaction whose first event has decided whether
    to NOTIFY (and taken the "sending" lock).

    Its presence in ``connection.run_on_commit`` says "this transaction has decided";
    Django drops it when a savepoint that registered it rolls back, as PostgreSQL drops
    that savepoint's NOTIFY, so the next send decides again.
    """


# --- the worker's half -------------------------------------------------------------------

#: Run by a worker about to sleep (parameters: the "waiting" lock): true if it now holds it.
ARM = "SELECT pg_try_advisory_lock_shared(%(class)s, %(key)s)"
#: Run by a worker that found work (the "waiting" lock): senders may stop notifying it.
DISARM = "SELECT pg_advisory_unlock_shared(%(class)s, %(key)s)"
#: Run by a worker about to sleep, once it holds "waiting": true if no sender is in flight.
NO_SENDER_IN_FLIGHT = (
    "SELECT CASE WHEN pg_try_advisory_lock(%(class)s, %(key)s) "
    "THEN pg_advisory_unlock(%(class)s, %(key)s) ELSE false END"
)


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
    """A LISTENing connection built from the Django connection's own parameters: a
    dedicated autocommit psycopg 3 connection, which holds the "waiting" lock while armed."""

    def __init__(self, alias: str, channel: str) -> None:
        import psycopg
        from psycopg import sql

        params: dict[str, Any] = dict(connections[alias].get_connection_params())
        params.pop("cursor_factory", None)
        params["autocommit"] = True
        self.connection = psycopg.connect(**params)
        self.connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        waiting, sending = wake_locks(channel)
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
            self.armed = bool(_value(self.connection.execute(ARM, self._waiting)))
            if not self.armed:
                return False
        return bool(_value(self.connection.execute(NO_SENDER_IN_FLIGHT, self._sending)))

    def disarm(self) -> None:
        """Busy again: senders may stop notifying. Does nothing unless armed."""
        if self.armed:
            self.connection.execute(DISARM, self._waiting)
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
