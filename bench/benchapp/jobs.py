"""Peers' task bodies: no-ops, and the latency probe."""

from __future__ import annotations

from . import probe


def q2_noop(item_id):
    pass


def q2_ping(n):
    probe.hit(n)
