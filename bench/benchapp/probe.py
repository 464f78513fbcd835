"""Receiver-start probe: a UDP datagram to the latency benchmark, no database work."""

from __future__ import annotations

import os
import socket
import time

_PORT = int(os.environ.get("BENCH_PROBE_PORT", "0"))
_SOCK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def hit(n: int) -> None:
    """Report that the job numbered ``n`` started now."""
    if _PORT:
        _SOCK.sendto(f"{n} {time.time():.6f}".encode(), ("127.0.0.1", _PORT))
