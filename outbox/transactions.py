"""Transactions a receiver leaves open on the worker's connections, found and rolled back.

The worker calls receivers in autocommit and records each outcome on the same connection.
A receiver that returns inside a transaction (``transaction.set_autocommit(False)``, an
``atomic()`` entered and never exited, a raw ``BEGIN``) would take every later write of
the worker and of the receivers after it into that transaction, which nothing commits: on
PostgreSQL the batch would be logged done and stay locked and pending, on SQLite the open
transaction would hold the database's write lock. So after each receiver the worker looks
at every connection it has open, and rolls back and closes those a receiver left in a
transaction: the receiver's uncommitted writes are lost, and its event fails.

The look reads client-side state only, Django's and the driver's, so it costs no round
trip: the driver's state is the server's as of the last reply, which is when a
transaction opens, fails or ends.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from .exceptions import OutboxError

__all__ = [
    "Before",
    "TransactionLeftOpen",
    "discard",
    "in_transaction",
    "open_transactions",
    "roll_back_left_open",
]

logger = logging.getLogger("outbox")

# libpq's PQtransactionStatus, as psycopg 2 and 3 report it (``connection.info``):
# ACTIVE (a statement running), INTRANS (in a transaction), INERROR (in a failed one).
# IDLE (0) is autocommit's resting state; UNKNOWN (4) is a broken connection, which the
# worker's reconnection handles.
_PQ_IN_TRANSACTION = frozenset({1, 2, 3})


class TransactionLeftOpen(OutboxError):
    """A receiver returned with a transaction open; its uncommitted writes were rolled back."""


def in_transaction(connection: BaseDatabaseWrapper) -> bool:
    """Whether an open Django ``connection`` is out of autocommit or in a transaction,
    by Django's account or by the driver's account of the server; no round trip."""
    raw = connection.connection
    if raw is None:
        return False
    if connection.closed_in_transaction or connection.in_atomic_block or connection.needs_rollback:
        return True
    if not connection.autocommit:  # get_autocommit() without its ensure_connection(): open
        return True
    pgconn = getattr(raw, "pgconn", None)
    if pgconn is not None:  # psycopg 3's libpq connection: an int, and no object made per look
        return pgconn.transaction_status in _PQ_IN_TRANSACTION
    info = getattr(raw, "info", None)
    status = getattr(info, "transaction_status", None)
    if isinstance(status, int):  # psycopg 2 and 3
        return status in _PQ_IN_TRANSACTION
    return bool(getattr(raw, "in_transaction", False))  # sqlite3; False where unknown


class Before:
    """This thread's connections before a receiver runs, and the aliases of those in a
    transaction then: none in a worker, which runs in autocommit. A worker run inside a
    transaction (a test's ``atomic()``) leaves that transaction to its owner.

    Taken once per batch (every receiver leaves the connections as it found them, or is
    failed and they are put back so), it also spares each event the lookup of the thread's
    connections through Django's thread-and-task-local handler, once every alias has its
    connection object in this thread (with one database, from the first claim on): a
    receiver can then open none that the list does not hold. Django keeps each alias's
    object for the thread's life; :func:`discard` reconnects the same object.
    """

    __slots__ = ("aliases", "connections", "every_alias")

    def __init__(self) -> None:
        self.connections = connections.all(initialized_only=True)
        self.aliases = frozenset(c.alias for c in self.connections if in_transaction(c))
        self.every_alias = len(self.connections) == len(connections.settings)

    def now(self) -> Sequence[BaseDatabaseWrapper]:
        """This thread's connection objects now."""
        return self.connections if self.every_alias else connections.all(initialized_only=True)


def open_transactions() -> Before:
    """This thread's connections now, and which are in a transaction (:class:`Before`)."""
    return Before()


def roll_back_left_open(before: Before) -> list[str]:
    """Roll back and close every connection in a transaction that was not in one
    ``before`` the receiver ran; return their aliases (normally none)."""
    left = []
    for connection in before.now():
        if connection.alias not in before.aliases and in_transaction(connection):
            discard(connection)
            left.append(connection.alias)
    return left


def discard(connection: BaseDatabaseWrapper) -> None:
    """Roll back whatever ``connection`` has open and close it; the next query reconnects,
    in autocommit, outside any atomic block."""
    raw = connection.connection
    if raw is not None and not connection.closed_in_transaction:
        try:
            # Now, not when the server notices the disconnection: the receiver's locks go
            # before the worker writes again. Both drivers roll back in autocommit mode too.
            raw.rollback()
        except Exception:  # noqa: BLE001 - closing the connection rolls back as well
            logger.debug("rolling back the transaction a receiver left open failed", exc_info=True)
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - the connection is dropped below whatever the driver says
        logger.debug("closing the connection a receiver left in a transaction failed", exc_info=True)
    # Inside an atomic block, close() keeps the closed connection until the block exits,
    # which this one never will: drop it, as Atomic.__exit__ would, and reconnect now, as
    # connect() resets Django's transaction state (atomic blocks, savepoints, autocommit)
    # that Atomic.__enter__ and on_commit() read before any query would reconnect.
    connection.connection = None
    try:
        # Not ensure_connection(): it refuses to reconnect inside that atomic block.
        with connection.wrap_database_errors:
            connection.connect()
    except DatabaseError as exc:
        # The state is reset before connecting; the next query tries again.
        logger.warning("could not reconnect to database %r: %s", connection.alias, exc)
