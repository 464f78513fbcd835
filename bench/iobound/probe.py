"""Completion probe: a UDP datagram to the harness when a job's body has finished waiting.

The same probe in every system, so that every rate counts bodies that ran to their end
(not rows marked done): an ``async def`` that a worker never awaited counts nothing.
"""

from __future__ import annotations

import os
import socket

_PORT = int(os.environ.get("BENCH_IO_PORT", "0"))
_TOKEN = os.environ.get("BENCH_IO_TOKEN", "-")
_sock: tuple[int, socket.socket] | None = None

WAIT = 0.05  # seconds each body waits: the I/O it stands for


def done(n: int) -> None:
    """Report that job ``n`` finished (one socket per process: prefork children fork)."""
    global _sock
    if not _PORT:
        return
    if _sock is None or _sock[0] != os.getpid():
        _sock = (os.getpid(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    _sock[1].sendto(f"{_TOKEN} {n}".encode(), ("127.0.0.1", _PORT))
