"""The floor: a raw psycopg loop running only our claim and completion statements.

No Django in the loop, no decoding, no dispatch: what the database and the driver allow,
which bounds what the worker could reach. The SQL is imported from outbox/queries.py, not
copied (Django is set up first only because the statements take names from the model).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid

import django
import psycopg

BATCH_SIZE = 100  # outbox's default BATCH_SIZE
LEASE_SECONDS = 60.0


def main(dsn: str) -> None:
    django.setup()  # only for the statements, which take the table's name from the model
    from outbox.queries import CLAIM_POSTGRESQL, COMPLETE_POSTGRESQL

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    worker = f"{socket.gethostname()}:{os.getpid()}"
    # Client-side binding, as Django's psycopg backend sends statements: no server-side
    # prepared statement whose generic plan, made while the table was empty, outlives the
    # burst of rows the benchmark inserts.
    with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        while not stopping:
            token = uuid.uuid4().hex
            params = {"token": token, "lease": LEASE_SECONDS, "limit": BATCH_SIZE, "worker": worker}
            rows = conn.execute(CLAIM_POSTGRESQL, params).fetchall()
            if not rows:
                time.sleep(0.05)
                continue
            ids = [row[0] for row in rows]
            conn.execute(COMPLETE_POSTGRESQL, [ids, [0.0] * len(ids), [0.0] * len(ids), token])


if __name__ == "__main__":
    main(sys.argv[1])
