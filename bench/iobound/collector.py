"""The harness's end of the completion probe (probe.py): counts the datagrams of one step."""

from __future__ import annotations

import socket
import threading
import time
import uuid

MB = 2**20


class Collector:
    """Counts the completion datagrams of one measurement (see probe.py)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.token = ""
        self.seen: dict[int, float] = {}
        self.duplicates = 0
        self.last = 0.0
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def start(self) -> str:
        with self.lock:
            self.token = uuid.uuid4().hex[:12]
            self.seen, self.duplicates, self.last = {}, 0, 0.0
        return self.token

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(200)
            except TimeoutError:
                continue
            now = time.time()
            token, _, n = data.decode().partition(" ")
            with self.lock:
                if token != self.token:
                    continue  # a late datagram of an earlier measurement
                if int(n) in self.seen:
                    self.duplicates += 1
                else:
                    self.seen[int(n)] = now
                    self.last = now
