"""Leases: a slow receiver keeps its rows, a dead worker's rows come back within the lease
plus one poll, and a worker that lost its lease cannot overwrite the result of the one that
took the row over (completion is fenced on the claim token)."""

from __future__ import annotations

import datetime
import signal
import time

import pytest
from django.db import transaction

from outbox import queries
from outbox.models import Event
from tests.conftest import wait_for
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)


def _held_by(worker) -> bool:
    return Event.objects.filter(status="running", worker__endswith=f":{worker.process.pid}").exists()


def test_a_receiver_running_three_leases_long_runs_once(worker_process):
    work.send(sender=None, key="slow", sleep=3.5)
    work.send(sender=None, key="after")
    # Two workers with a 1 s lease: without the heartbeat, the second takes the row over
    # after a second and the receiver runs twice.
    first = worker_process("--lease-seconds", "1", "--poll-interval", "0.1", "--batch-size", "1")
    second = worker_process("--lease-seconds", "1", "--poll-interval", "0.1", "--batch-size", "1")
    wait_for(lambda: Event.objects.filter(status="done").count() == 2, timeout=60)
    assert sorted(Call.objects.values_list("key", flat=True)) == ["after", "slow"]
    slow = Event.objects.get(payload__kwargs__key="slow")
    assert slow.attempts == 1
    assert first.process.poll() is None and second.process.poll() is None


def test_a_killed_workers_rows_are_reclaimed_within_the_lease_and_one_poll(worker_process):
    lease, poll = 2.0, 0.5
    with transaction.atomic():
        work.send(sender=None, key="stuck", sleep=60)
        work.send(sender=None, key="queued-1")
        work.send(sender=None, key="queued-2")
    doomed = worker_process("--lease-seconds", str(lease), "--poll-interval", str(poll))
    wait_for(lambda: Event.objects.filter(status="running").count() == 3, timeout=60)
    rescuer = worker_process("--lease-seconds", "30", "--poll-interval", str(poll))
    # The doomed worker hands back the rows it has not started, as its receiver runs long;
    # the row in hand stays its own through a few heartbeats.
    wait_for(lambda: Call.objects.filter(worker_pid=rescuer.process.pid).count() == 2, timeout=60)
    time.sleep(lease)
    stuck = Event.objects.get(payload__kwargs__key="stuck")
    assert (stuck.status, stuck.worker.endswith(f":{doomed.process.pid}")) == ("running", True)
    doomed.process.kill()
    doomed.process.wait()
    expiry = Event.objects.get(pk=stuck.pk).available_at

    wait_for(lambda: _held_by(rescuer), timeout=30)
    reclaimed = Event.objects.get(pk=stuck.pk)
    claimed_at = reclaimed.available_at - datetime.timedelta(seconds=30)
    late = (claimed_at - expiry).total_seconds()
    assert late >= 0, "a row was taken from a live lease"
    # One poll interval, plus generous slack for a machine shared with other test runs.
    assert late <= poll + 2.0, f"reclaimed {late:.2f}s after the lease expired"
    # The death was in a batch, so it is pinned on no row: the attempt it counted is given
    # back, and the one counted now is the rescuer's, which runs the row alone.
    wait_for(lambda: Event.objects.get(pk=stuck.pk).attempts == 1, timeout=10)


def test_a_late_worker_cannot_overwrite_a_reclaimed_row():
    work.send(sender=None, key="contested")
    alias = "default"
    late_token, [row] = queries.claim(alias, 10, 0.01, "late")
    time.sleep(0.05)
    token, [same] = queries.claim(alias, 10, 60, "rescuer")
    assert same.id == row.id and token != late_token

    # Every write of the late worker is refused: it no longer holds the row.
    assert queries.complete(alias, late_token, [row.id]) == 0
    assert queries.record_failure(alias, late_token, row.id, "late", "", None) == 0
    assert queries.release(alias, late_token, [row.id]) == 0
    assert queries.extend_lease(alias, late_token, [row.id], 600) == 0
    event = Event.objects.get()
    # The late worker's claim counted an attempt for its whole batch: as its lease expired,
    # the rescuer's claim gives it back, and counts one only when it runs the row alone.
    assert (event.status, event.worker, event.lease_token, event.attempts) == ("running", "rescuer", token, 0)

    # The rescuer's result stands, whatever the late worker tries afterwards.
    assert queries.record_failure(alias, token, row.id, "RuntimeError: rescuer's", "", None) == 1
    assert queries.complete(alias, late_token, [row.id]) == 0
    event.refresh_from_db()
    assert (event.status, event.last_error) == ("failed", "RuntimeError: rescuer's")
    assert queries.claim(alias, 10, 60, "third")[1] == []


def test_a_done_row_is_not_reopened_by_its_old_token():
    work.send(sender=None, key="finished")
    token, [row] = queries.claim("default", 10, 60, "w")
    assert queries.complete("default", token, [row.id]) == 1
    assert queries.complete("default", token, [row.id]) == 0
    assert queries.release("default", token, [row.id]) == 0
    assert queries.record_failure("default", token, row.id, "x", "", 1.0) == 0
    assert Event.objects.get().status == "done"


def test_a_frozen_worker_cannot_overwrite_the_result_of_the_worker_that_took_over(worker_process):
    work.send(sender=None, key="contested", sleep=3)
    frozen = worker_process("--lease-seconds", "1", "--poll-interval", "0.1")
    wait_for(lambda: _held_by(frozen), timeout=60)
    # Frozen in its receiver (a GC pause, a stalled VM): its heartbeat stops too.
    frozen.signal(signal.SIGSTOP)
    try:
        rescuer = worker_process("--lease-seconds", "30", "--poll-interval", "0.1")
        wait_for(lambda: Event.objects.filter(status="done").exists(), timeout=60)
        result = Event.objects.get()
        assert result.worker.endswith(f":{rescuer.process.pid}")
    finally:
        frozen.signal(signal.SIGCONT)
    # The frozen worker wakes, finishes its receiver (a second call: at-least-once) and
    # tries to mark the row done with its old token.
    wait_for(lambda: Call.objects.filter(worker_pid=frozen.process.pid).exists(), timeout=30)
    time.sleep(1.0)
    after = Event.objects.get()
    assert (after.status, after.worker, after.finished_at, after.attempts) == (
        "done",
        result.worker,
        result.finished_at,
        result.attempts,
    )
    assert frozen.process.poll() is None, "the late worker carries on"
