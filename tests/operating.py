"""Helpers for the operator command tests: events in every state, made by real sends."""

from __future__ import annotations

import datetime
import io
from dataclasses import dataclass

from django.core.management import CommandError, call_command
from django.utils import timezone

from outbox.models import Event
from outbox.worker import Worker
from tests.testapp import receivers
from tests.testapp.signals import pinged

FLAKY = "tests.testapp.receivers.flaky"
ON_FOLLOWED = "tests.testapp.receivers.on_followed"


def ping(n: int = 1, **kwargs) -> list[int]:
    """Send ``pinged`` n times (each writes one event for ``flaky``); return the new ids."""
    before = Event.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    for i in range(n):
        pinged.send(sender="ops", n=i, **kwargs)
    return list(Event.objects.filter(pk__gt=before).order_by("pk").values_list("pk", flat=True))


def drain_all() -> None:
    """Run the worker until nothing is pending, making scheduled retries due at once."""
    for _ in range(20):
        Worker(once=True, listen=False).run()
        waiting = Event.objects.filter(status="pending")
        if not waiting.exists():
            return
        waiting.update(available_at=timezone.now())
    raise AssertionError("events still pending after 20 drains")


def failed(n: int = 1) -> list[int]:
    """n events whose receiver failed every attempt: status ``failed``."""
    receivers.FAILURES["remaining"] = 10**6
    ids = ping(n)
    drain_all()
    receivers.FAILURES["remaining"] = 0
    assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"failed"}
    return ids


def done(n: int = 1) -> list[int]:
    """n events run successfully: status ``done``."""
    ids = ping(n)
    drain_all()
    return ids


def finished_ago(ids, **delta) -> None:
    """Move the finish time of these events into the past."""
    Event.objects.filter(pk__in=ids).update(finished_at=timezone.now() - datetime.timedelta(**delta))


@dataclass
class Result:
    code: int
    out: str
    err: str


def run(name: str, *args: str) -> Result:
    """``call_command`` with its output and exit status (a CommandError's returncode)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=err)
    except CommandError as exc:
        return Result(exc.returncode, out.getvalue(), str(exc))
    return Result(0, out.getvalue(), err.getvalue())
