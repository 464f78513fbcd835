"""Receiver timeouts on MySQL and MariaDB: stopping a query the receiver waits on.

A receiver's ``timeout=`` is enforced by SIGALRM (outbox.execution), whose handler runs only
between Python bytecodes. mysqlclient waits for a query's result in C, and the alarm does not
end that wait: a receiver stuck in a query (a lock, a slow statement) would hold the worker
until the server answered. So on these databases a timer thread, armed beside the alarm,
runs ``KILL QUERY`` on a connection of its own for every MySQL connection the receiver's
thread had open when it started (a query on a connection opened later is not covered); the
query ends, and the pending alarm then raises ``ReceiverTimeout`` in the receiver as on
other databases. ``KILL QUERY`` of a session that is idle by then does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from django.db import connections

__all__ = ["GRACE", "killing_queries_after"]

logger = logging.getLogger("outbox")

#: Seconds after the timeout before the query is killed: the alarm goes first.
GRACE = 0.2


@contextlib.contextmanager
def killing_queries_after(timeout: float) -> Iterator[None]:
    """Within the block, kill this thread's MySQL queries still running ``timeout`` seconds
    (plus :data:`GRACE`) after it began. Nothing happens on other databases."""
    # Each connection's server session, read now: mysqlclient refuses any call on a
    # connection from another thread while it waits for a result.
    mysql = [
        (c.get_connection_params(), c.connection.thread_id())
        for c in connections.all(initialized_only=True)
        if c.vendor == "mysql" and c.connection is not None
    ]
    if not mysql:
        yield
        return
    returned = threading.Event()
    timer = threading.Timer(timeout + GRACE, _kill, args=(mysql, returned))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        returned.set()  # a kill already under way stops short of the worker's own queries
        timer.cancel()


def _kill(sessions: list[tuple[dict[str, Any], int]], returned: threading.Event) -> None:
    import MySQLdb

    for params, session in sessions:
        try:
            params = {key: value for key, value in params.items() if key != "client_flag"}
            killer = MySQLdb.connect(**params)
            try:
                if returned.is_set():
                    return
                killer.cursor().execute(f"KILL QUERY {int(session)}")
            finally:
                killer.close()
        except Exception:  # noqa: BLE001 - the alarm still ends the receiver once the query does
            logger.warning("could not kill the query of a receiver past its timeout", exc_info=True)
