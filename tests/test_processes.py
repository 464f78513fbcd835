"""Real `run_outbox` processes: sharing work, SIGKILL, NOTIFY wake-ups, SIGTERM."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from django.db import connection, transaction

from outbox.models import Event
from tests.conftest import SKIP_LOCKED_VENDORS, postgres_only, wait_for
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)


def send_work(n, sleep=0.0, prefix="k"):
    with transaction.atomic():
        for i in range(n):
            work.send(sender="test", key=f"{prefix}{i}", sleep=sleep)
    return {f"{prefix}{i}" for i in range(n)}


def done_count():
    return Event.objects.filter(status="done").count()


def test_two_worker_processes_drain_everything_each_receiver_run_exactly_once(worker_process):
    n = 2000 if connection.vendor in SKIP_LOCKED_VENDORS else 400
    keys = send_work(n)
    workers = [worker_process("--batch-size", "50") for _ in range(2)]
    wait_for(lambda: done_count() == n, timeout=120)
    for proc in workers:
        proc.signal(signal.SIGTERM)
    assert [proc.wait() for proc in workers] == [0, 0]
    calls = Counter(Call.objects.values_list("key", flat=True))
    assert set(calls) == keys
    assert max(calls.values()) == 1
    if connection.vendor in SKIP_LOCKED_VENDORS:  # SKIP LOCKED shares the work
        pids = Counter(Call.objects.values_list("worker_pid", flat=True))
        assert len(pids) == 2, pids


def test_a_worker_killed_mid_batch_loses_nothing_another_finishes_after_the_lease(worker_process):
    keys = send_work(60, sleep=0.05)
    doomed = worker_process("--batch-size", "10", "--lease-seconds", "2")
    wait_for(lambda: Call.objects.count() >= 15, timeout=60)
    doomed.signal(signal.SIGKILL)
    doomed.wait()
    in_flight = Event.objects.filter(status="running").count()
    assert 0 < in_flight <= 10
    killed_at = time.monotonic()
    rescuer = worker_process("--batch-size", "10", "--lease-seconds", "2", "--poll-interval", "0.2")
    wait_for(lambda: done_count() == 60, timeout=60)
    assert time.monotonic() - killed_at < 30
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait() == 0
    calls = Counter(Call.objects.values_list("key", flat=True))
    assert set(calls) == keys, "an event was lost"
    duplicates = sum(calls.values()) - len(keys)
    assert duplicates <= 10, f"{duplicates} duplicate calls, more than one batch in flight"


@postgres_only
def test_notify_wakes_an_idle_worker_within_a_second(worker_process):
    proc = worker_process("--poll-interval", "30", "-v", "2")
    # Let it start, find nothing, and settle into waiting on LISTEN.
    send_work(1, prefix="warmup")
    wait_for(lambda: Call.objects.count() == 1, timeout=30)
    time.sleep(1.0)
    latencies = []
    for i in range(3):
        started = time.monotonic()
        send_work(1, prefix=f"wake{i}-")
        wait_for(lambda i=i: Call.objects.filter(key=f"wake{i}-0").exists(), timeout=30, interval=0.005)
        latencies.append(time.monotonic() - started)
        time.sleep(0.3)
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert min(latencies) < 1.0 and sorted(latencies)[1] < 1.0, latencies


@postgres_only
def test_a_worker_does_not_sleep_through_a_sender_that_wrote_before_it_waited(worker_process):
    """The event is written while no worker waits, so its transaction does not notify; the
    worker starts with a 30 s poll, finds nothing committed, and must still run the event
    soon after the commit rather than at its next poll."""
    with transaction.atomic():
        work.send(sender="test", key="early")
        proc = worker_process("--poll-interval", "30", "-v", "2")
        time.sleep(1.5)  # it claims, finds nothing, and cannot settle while we are open
        assert not Call.objects.exists()
    committed = time.monotonic()
    wait_for(lambda: Call.objects.filter(key="early").exists(), timeout=40, interval=0.005)
    latency = time.monotonic() - committed
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert latency < 2.0, latency


def test_sigterm_exits_zero_and_leaves_nothing_running(worker_process):
    send_work(40, sleep=0.05)
    proc = worker_process("--batch-size", "20")
    wait_for(lambda: Call.objects.count() >= 3, timeout=60)
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.output
    assert not Event.objects.filter(status="running").exists()
    assert Call.objects.count() == done_count()
