"""Claiming ahead (OUTBOX["WORKER_CLAIM_AHEAD"], PostgreSQL): while a batch of quick
receivers runs, the worker claims the next one from a second connection, carrying the
completion of the batch before. Not after a slow batch; a claim made ahead is handed back
with the batch it waits behind when a receiver there runs long, released unstarted when
the worker stops, and a claim made ahead that fails leaves nothing behind."""

from __future__ import annotations

import signal
import threading
from collections import Counter

import pytest
from django.db import OperationalError, connection, transaction
from django.test import override_settings

from outbox import claims
from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import calls, postgres_only, wait_for
from tests.testapp.atomic_receivers import plain_work
from tests.testapp.models import Call
from tests.testapp.receivers import CALLS
from tests.testapp.signals import pinged

pytestmark = pytest.mark.django_db(transaction=True)


def send(n, signal_=pinged, prefix="k", **kwargs):
    """``n`` events: pinged ones numbered (``n``), tests.testapp.atomic_receivers' keyed."""
    with transaction.atomic():
        for i in range(n):
            mark = {"n": i} if signal_ is pinged else {"key": f"{prefix}{i}"}
            signal_.send(sender="test", **mark, **kwargs)


def statuses():
    return Counter(Event.objects.values_list("status", flat=True))


def finish(worker):
    """Run the worker's batches until nothing is due, then write what it owes."""
    while worker._run_batch():
        pass
    worker._write_owed()
    worker._close_ahead()


def test_only_a_postgresql_worker_running_receivers_one_at_a_time_claims_ahead():
    postgresql = connection.vendor == "postgresql"
    assert Worker(listen=False).claim_ahead is postgresql
    assert Worker(listen=False, concurrency=4).claim_ahead is False
    assert Worker(once=True).claim_ahead is False
    with override_settings(OUTBOX={"WORKER_CLAIM_AHEAD": False}):
        assert Worker(listen=False).claim_ahead is False


@postgres_only
def test_the_next_batch_is_claimed_while_one_runs_and_carries_the_one_before():
    send(15)
    worker = Worker(listen=False, batch_size=5)
    assert worker._run_batch() == 5
    worker._ahead[0].result()
    # Batch 1 ran (its successes owed, still running in the table); batch 2 claimed ahead.
    assert statuses() == {"running": 10, "pending": 5}
    assert worker._run_batch() == 5
    worker._ahead[0].result()
    # Batch 3 claimed ahead, carrying batch 1's completion; batch 2 ran, owed.
    assert statuses() == {"done": 5, "running": 10}
    finish(worker)
    assert statuses() == {"done": 15}
    assert sorted(kwargs["n"] for _, _, kwargs in calls("flaky")) == list(range(15))


@postgres_only
def test_the_claim_made_ahead_is_under_way_before_the_batch_it_waits_behind_starts(monkeypatch):
    """The claim thread needs the interpreter lock to send its statement, and would get it
    only once the batch's receivers had blocked or had run for sys.getswitchinterval() (5
    ms): quick receivers that never block would all run first, and the claim would overlap
    nothing (BENCHMARKS.md, "Drain: the claim made ahead overlaps the batch")."""
    real = claims.claim

    def claim(*args, **kwargs):
        if threading.current_thread().name.startswith("outbox-claim-ahead"):
            CALLS.append(("claim ahead", None, {}))
        return real(*args, **kwargs)

    monkeypatch.setattr(claims, "claim", claim)
    send(20)
    worker = Worker(listen=False, batch_size=5)
    try:
        for _ in range(3):
            assert worker._run_batch() == 5
    finally:
        finish(worker)
    # Batch 1 is claimed by the loop itself; each batch then claims the next one ahead.
    names = [name for name, _, _ in CALLS]
    assert names[:18] == (["claim ahead"] + ["flaky"] * 5) * 3
    assert statuses() == {"done": 20}


@postgres_only
@override_settings(OUTBOX={"WORKER_CLAIM_AHEAD": False})
def test_the_setting_turns_claiming_ahead_off():
    send(15)
    worker = Worker(listen=False, batch_size=5)
    assert worker._run_batch() == 5
    assert worker._ahead is None and statuses() == {"running": 5, "pending": 10}
    finish(worker)
    assert statuses() == {"done": 15}


@postgres_only
def test_no_claim_ahead_after_a_slow_batch():
    """The rows claimed ahead wait for the batch in hand: not after a batch that took over
    a tenth of a second (worker._AHEAD_AFTER_BATCHES_UNDER), where others could run them."""
    send(6, plain_work, pause=0.06)
    worker = Worker(listen=False, batch_size=2)
    assert worker._run_batch() == 2  # the first batch claims ahead: nothing measured yet
    assert worker._ahead is not None
    assert worker._run_batch() == 2  # after a batch of 0.12 s, no claim ahead
    assert worker._ahead is None
    assert statuses() == {"done": 2, "running": 2, "pending": 2}
    finish(worker)
    assert statuses() == {"done": 6}


@postgres_only
def test_a_claim_made_ahead_is_handed_back_when_the_batch_it_waits_behind_runs_long():
    send(1, plain_work, prefix="a", pause=1.6)  # longer than the hand-back time, 1 s
    send(3, plain_work, prefix="b")
    worker = Worker(listen=False, batch_size=2, lease_seconds=3)
    worker._heartbeat.start()
    try:
        assert worker._run_batch() == 2
        # While k0 ran, the heartbeat handed back its batch's unstarted rest and the claim
        # made ahead: due again, their attempts undone.
        ahead = worker._ahead[0].result()
        assert len(ahead) == 2 and ahead.next() is None
        handed = Event.objects.filter(id__in=[row.id for row in ahead.rows])
        assert {(e.status, e.attempts, e.lease_token) for e in handed} == {("pending", 0, None)}
        finish(worker)
    finally:
        worker._heartbeat.stop()
    assert statuses() == {"done": 4}
    keys = Counter(Call.objects.filter(receiver="plain").values_list("key", flat=True))
    assert keys == {"a0": 1, "b0": 1, "b1": 1, "b2": 1}


@postgres_only
def test_a_claim_made_ahead_that_fails_loses_nothing_and_runs_nothing_twice(monkeypatch):
    """The claim made ahead raises a connection error (the database went away) as it
    carries the completion of batch 1: the worker raises it to its loop, which reconnects;
    batch 1 is written done by the next batch, and every event runs once."""
    real, failed = claims.claim, []

    def claim(*args, **kwargs):
        ahead = threading.current_thread().name.startswith("outbox-claim-ahead")
        if ahead and kwargs.get("settle") and not failed:
            failed.append(True)
            raise OperationalError("server closed the connection unexpectedly")
        return real(*args, **kwargs)

    monkeypatch.setattr(claims, "claim", claim)
    send(20)
    worker = Worker(listen=False, batch_size=5)
    assert worker._run_batch() == 5  # batch 1; batch 2 claimed ahead
    assert worker._run_batch() == 5  # batch 2; the claim of batch 3, carrying 1, fails
    with pytest.raises(OperationalError):
        worker._run_batch()
    assert failed and worker._unsettled
    worker._reset_connections()
    finish(worker)
    assert statuses() == {"done": 20}
    assert sorted(kwargs["n"] for _, _, kwargs in calls("flaky")) == list(range(20))


@postgres_only
@pytest.mark.slow
def test_a_worker_stopped_with_a_claim_made_ahead_hands_it_back(worker_process):
    """SIGTERM in a busy drain: the batch in hand finishes, the claim made ahead is released
    (its attempts undone), and nothing is left running or run twice."""
    send(3000)
    proc = worker_process("--batch-size", "50")
    wait_for(lambda: Event.objects.filter(status="done").count() >= 200)
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "running" not in statuses()
    assert not Event.objects.filter(status="pending", attempts__gt=0).exists()
    proc = worker_process()
    wait_for(lambda: statuses() == {"done": 3000}, timeout=120)
    proc.stop()
