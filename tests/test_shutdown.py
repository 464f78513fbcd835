"""Stopping a worker: SIGTERM finishes the receiver in hand and hands the rest of the batch
back at once; a second SIGTERM exits at once; ``--no-listen`` drains by polling alone."""

from __future__ import annotations

import signal
import time

import pytest
from django.db import transaction
from django.utils import timezone

from outbox import queries
from outbox.models import Event
from tests.conftest import listening_sessions, postgres_only, wait_for
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)


def _send(count, sleep=0.0):
    with transaction.atomic():
        for i in range(count):
            work.send(sender=None, key=f"job-{i}", sleep=sleep, mark_start=bool(sleep))


def _receiver_started(key="job-0"):
    """Claimed is not started: a stop signal between the claim and the receiver's first line
    hands the row back and exits 0 at once, as it should."""
    return Call.objects.filter(receiver="started", key=key).exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_mid_batch_exits_0_and_hands_the_rest_back_due_now(signum, worker_process):
    _send(5, sleep=1.5)
    worker = worker_process("--batch-size", "10", "--lease-seconds", "600", "--poll-interval", "0.1")
    wait_for(lambda: Event.objects.filter(status="running").count() == 5, timeout=60)
    wait_for(_receiver_started, timeout=60)  # inside the first receiver
    asked = time.monotonic()
    worker.signal(signum)
    assert worker.wait(timeout=30) == 0, worker.output
    # The receiver in hand finishes (1.5 s at most), then the batch is recorded.
    assert time.monotonic() - asked < 10
    assert list(Call.objects.filter(receiver="record").values_list("key", flat=True)) == ["job-0"]
    assert not Event.objects.filter(status="running").exists(), "no row is left leased"
    handed_back = Event.objects.filter(status="pending")
    assert handed_back.count() == 4
    assert all(e.available_at <= timezone.now() and e.attempts == 0 for e in handed_back)
    assert all(e.lease_token is None for e in handed_back)
    # Another worker takes them at once, not after the 600 s lease.
    _, rows = queries.claim("default", 10, 60, "next")
    assert len(rows) == 4


def test_sigterm_while_idle_exits_0_promptly(worker_process):
    worker = worker_process("--poll-interval", "5")
    _send(1)
    wait_for(lambda: Event.objects.filter(status="done").exists(), timeout=60)
    asked = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert time.monotonic() - asked < 5, "the 5 s poll interval does not delay the exit"


def test_a_second_sigterm_exits_at_once(worker_process):
    _send(1, sleep=60)
    worker = worker_process("--lease-seconds", "600")
    wait_for(_receiver_started, timeout=60)
    worker.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert worker.process.poll() is None, "the first SIGTERM waits for the receiver in hand"
    asked = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 1
    assert time.monotonic() - asked < 5
    # Forced out mid-receiver: its row stays leased, and is reclaimed when the lease expires.
    assert Event.objects.get().status == "running"


@postgres_only
def test_no_listen_drains_by_polling_alone(worker_process):
    worker = worker_process("--no-listen", "--poll-interval", "0.2", "-v", "1")
    _send(3)
    wait_for(lambda: Call.objects.count() == 3, timeout=60)
    assert listening_sessions() == 0
    _send(2)  # sent while it is idle: found by the next poll
    wait_for(lambda: Call.objects.count() == 5, timeout=60)
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert "polling only" in worker.output


@postgres_only
def test_a_listening_worker_is_seen_listening(worker_process):
    # The other side of the test above: the check for a LISTEN session can see one.
    worker = worker_process("--poll-interval", "30")
    wait_for(lambda: listening_sessions() == 1, timeout=60)
    _send(1)
    wait_for(lambda: Call.objects.count() == 1, timeout=10)  # woken by NOTIFY, not the 30 s poll
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
