"""Our receivers: no-op bodies, connected through the outbox (and one on_commit)."""

from __future__ import annotations

import outbox

from . import probe
from .signals import ping, work1, work3, work_now


@outbox.receiver([work1, work3])
def noop(sender, **kwargs):
    pass


@outbox.receiver(work3)
def noop_b(sender, **kwargs):
    pass


@outbox.receiver(work3)
def noop_c(sender, **kwargs):
    pass


@outbox.receiver(work_now, delivery="on_commit")
def noop_now(sender, **kwargs):
    pass


@outbox.receiver(ping)
def on_ping(sender, n, **kwargs):
    probe.hit(n)
