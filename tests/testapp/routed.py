"""Receivers on named queues and with ordering keys, recorded durably (``Call`` rows) for
tests that run real worker processes."""

import os
import time

import outbox

from .models import Call
from .signals import ordered, queued


def _record(receiver, key):
    Call.objects.create(receiver=receiver, key=key, worker_pid=os.getpid())


@outbox.receiver(queued, queue="fast")
def fast_job(sender, key, **kwargs):
    _record("fast", key)


@outbox.receiver(queued, queue="slow")
def slow_job(sender, key, sleep=0.0, **kwargs):
    if sleep:
        time.sleep(sleep)
    _record("slow", key)


def by_account(sender, account, **kwargs):
    """The ordering key: one account's events run in send order."""
    return account


def _step(account, step, fail="", hold=0.0):
    """Record the start and end of a step, around ``hold`` seconds; fail as asked: "once"
    (the first attempt), "until_fixed" (until a Call(receiver="fixed") row names the step)."""
    name = f"{account}:{step}"
    _record("start", name)
    if hold:
        time.sleep(hold)
    if fail == "once" and not Call.objects.filter(receiver="failed", key=name).exists():
        _record("failed", name)
        raise RuntimeError(f"step {name} fails once")
    if fail == "until_fixed" and not Call.objects.filter(receiver="fixed", key=name).exists():
        _record("failed", name)
        raise RuntimeError(f"step {name} fails until fixed")
    _record("end", name)


@outbox.receiver(ordered, ordering_key=by_account, max_attempts=3)
def in_order(sender, account, step, **kwargs):
    _step(account, step, kwargs.get("fail", ""), kwargs.get("hold", 0.0))


def steps(account):
    """The steps of ``account`` that ran to the end, in the order they ended."""
    return [
        int(key.rsplit(":", 1)[1])
        for key in Call.objects.filter(receiver="end", key__startswith=f"{account}:")
        .order_by("id")
        .values_list("key", flat=True)
    ]


def overlaps():
    """Pairs of steps of one account that ran at once: a start seen while another step of
    the same account had started and not ended (by the order of Call ids)."""
    running, found = {}, []
    marks = Call.objects.filter(receiver__in=["start", "end", "failed"]).order_by("id")
    for receiver, key in marks.values_list("receiver", "key"):
        account, step = key.rsplit(":", 1)
        if receiver == "start":
            if account in running:
                found.append((running[account], step))
            running[account] = step
        else:
            running.pop(account, None)
    return found
