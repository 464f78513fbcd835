"""Leases and due times are measured by the database's clock, not each machine's: a worker
or a web server whose clock is wrong neither steals a live lease nor delays events.

The skewed processes run under libfaketime (Debian's ``faketime``; ``make test`` installs
it). On SQLite every process shares one machine's clock, so these tests are PostgreSQL's
and MySQL's/MariaDB's.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from outbox.models import Event
from tests.conftest import ROOT, wait_for, worker_env
from tests.testapp.models import Call
from tests.testapp.signals import work

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.processes,
    pytest.mark.skipif(
        not any(name in settings.DATABASES["default"]["ENGINE"] for name in ("postgresql", "mysql")),
        reason="SQLite runs on one machine: every process reads the same clock, nothing to skew",
    ),
    pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime missing: apt-get install faketime"),
]


def skewed(offset: str) -> dict[str, str]:
    """Environment for a process whose wall clock is ``offset`` (``+45s``) off.

    Monotonic time is left alone: only a machine's wall clock drifts, and with it faked
    libfaketime 0.9.10 leaves Python's timed lock waits (``sem_clockwait``) hanging. The
    price: ``time.sleep()`` fails with EINVAL under it, so skewed processes must not run
    receivers that sleep (a listening worker waits on its connection, not in ``sleep``).
    """
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}


def clock_under(environment: dict[str, str]) -> datetime.datetime:
    """What a Python process started with ``environment`` reads as the time."""
    probe = [sys.executable, "-c", "import time; print(time.time())"]
    out = subprocess.run(probe, env={**os.environ, **environment}, capture_output=True, text=True, check=True)
    return datetime.datetime.fromtimestamp(float(out.stdout), datetime.timezone.utc)


@pytest.mark.skipif(
    "mysql" in settings.DATABASES["default"]["ENGINE"],
    reason="a worker on MySQL polls, and time.sleep() fails under libfaketime (see skewed())",
)
def test_a_worker_whose_clock_runs_ahead_does_not_take_a_live_lease(worker_process):
    work.send(sender=None, key="slow", sleep=6)
    # A 2 s lease, extended by the heartbeat every 2/3 s while the receiver runs.
    owner = worker_process("--lease-seconds", "2", "--poll-interval", "0.1", "--batch-size", "1")
    wait_for(lambda: Event.objects.filter(status="running").exists(), timeout=60)
    skew = (clock_under(skewed("+45s")) - timezone.now()).total_seconds()
    assert skew > 40, f"libfaketime did not shift the clock ({skew:.0f}s)"
    ahead = worker_process("--lease-seconds", "2", "--poll-interval", "0.1", env=skewed("+45s"))

    wait_for(lambda: Call.objects.filter(key="slow").exists(), timeout=60)
    wait_for(lambda: not Event.objects.filter(status="running").exists(), timeout=10)
    event = Event.objects.get()
    taken = (
        f"the skewed worker took the live lease: {event.status}, attempt {event.attempts}, {event.last_error}"
    )
    assert event.worker.endswith(f":{owner.process.pid}") and event.attempts == 1, taken
    assert event.status == "done"
    assert list(Call.objects.values_list("key", flat=True)) == ["slow"]
    # The skewed worker runs events all the same.
    work.send(sender=None, key="next")
    wait_for(lambda: Call.objects.filter(key="next").exists(), timeout=30)
    for proc in (owner, ahead):
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.output


def test_an_event_sent_by_a_machine_whose_clock_runs_ahead_runs_at_once(worker_process):
    sender = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "shell",
            "--settings=tests.settings",
            "-c",
            "from tests.testapp.signals import work; work.send(sender=None, key='from-the-future')",
        ],
        cwd=ROOT,
        env={**os.environ, **worker_env(), **skewed("+1h")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sender.returncode == 0, sender.stderr
    event = Event.objects.get()
    assert abs((event.available_at - timezone.now()).total_seconds()) < 30
    assert abs((event.created_at - timezone.now()).total_seconds()) < 30
    worker_process("--poll-interval", "0.1")
    wait_for(lambda: Call.objects.filter(key="from-the-future").exists(), timeout=30)
