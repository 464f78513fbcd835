"""``atomic=True``: the receiver's writes to the outbox's database and the event's fenced
"done" commit in one transaction, so its database effect happens exactly once per event.

In-process (the sequential worker, the concurrent runner, outbox.testing.drain) and with
real worker processes killed with SIGKILL, on every database of the suite.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections import Counter

import pytest
from django.db import connection, transaction

import outbox
from outbox import testing
from outbox.exceptions import RegistrationError
from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import wait_for
from tests.testapp.atomic_receivers import (
    atomic_slow,
    atomic_work,
    not_connected,
    not_connected_async,
    plain_work,
)
from tests.testapp.models import Call
from tests.testapp.signals import work

ATOMIC = "tests.testapp.atomic_receivers.atomic_record"


def send(signal_, n=1, prefix="k", **kwargs):
    with transaction.atomic():
        for i in range(n):
            signal_.send(sender="test", key=f"{prefix}{i}", **kwargs)
    return [f"{prefix}{i}" for i in range(n)]


def run_worker(concurrency=1):
    return Worker(once=True, listen=False, concurrency=concurrency).run()


def effects(receiver="atomic"):
    return Counter(Call.objects.filter(receiver=receiver).values_list("key", flat=True))


def unfinished() -> str:
    """The events not done, for a chaos test's failure message: which, how far, and why."""
    rows = Event.objects.exclude(status="done").order_by("id")
    return "; ".join(
        f"#{e.id} {e.receiver} {e.status} attempt {e.attempts}/{e.max_attempts}: {e.last_error[:160]}"
        for e in rows[:5]
    )


# --- registration --------------------------------------------------------------------------


def test_atomic_is_refused_where_it_cannot_hold():
    with pytest.raises(RegistrationError, match="delivery='outbox' only"):
        outbox.connect(work, not_connected, delivery="on_commit", atomic=True)
    with pytest.raises(RegistrationError, match="needs a sync receiver"):
        outbox.connect(work, not_connected_async, atomic=True)
    with pytest.raises(RegistrationError, match="True or False"):
        outbox.connect(work, not_connected, atomic="yes")
    assert not outbox.disconnect(work, not_connected)


def test_connecting_one_receiver_atomic_and_not_is_refused():
    from tests.testapp.atomic_receivers import atomic_record

    with pytest.raises(RegistrationError, match="atomic"):
        outbox.connect(work, atomic_record, max_attempts=5)


# --- the worker, in process ------------------------------------------------------------------

both_runners = pytest.mark.parametrize("concurrency", [1, 4], ids=["sequential", "concurrent"])


@both_runners
@pytest.mark.django_db(transaction=True)
def test_success_commits_the_receivers_writes_and_done_together(concurrency):
    keys = send(atomic_work, 5)
    assert run_worker(concurrency) == 5
    assert effects() == Counter(keys)
    assert set(Event.objects.values_list("status", "attempts", "lease_token")) == {("done", 1, None)}


@both_runners
@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_raises_has_its_writes_rolled_back_with_the_attempt(concurrency):
    send(atomic_work, 3, fail=True)
    run_worker(concurrency)  # retried while due, until their last attempt fails
    assert not effects(), "the failed attempts' writes were rolled back"
    assert Event.objects.count() == 3
    for event in Event.objects.all():
        assert event.status in ("pending", "failed") and event.attempts >= 1
        assert event.last_error.startswith("ValueError: atomic failed on purpose")


@both_runners
@pytest.mark.django_db(transaction=True)
def test_a_worker_that_lost_its_lease_cannot_commit(concurrency, caplog):
    send(atomic_work, 1, steal=True)
    with caplog.at_level(logging.WARNING, logger="outbox"):
        run_worker(concurrency)
    assert not effects(), "the writes of a worker that lost the lease were rolled back"
    event = Event.objects.get()
    # Left as the worker that holds it now has it: running, under its token, no error of ours.
    assert (event.status, event.lease_token, event.last_error) == ("running", "stolen", "")
    assert "lost its lease" in caplog.text


@both_runners
@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_leaves_an_atomic_block_open_commits_nothing(concurrency):
    send(atomic_work, 1, leave_open=True)
    run_worker(concurrency)
    assert not Call.objects.exists()
    event = Event.objects.get()
    assert event.status == "pending"
    assert event.last_error.startswith("TransactionLeftOpen: ")
    # The worker's connection is usable again: the next event commits.
    send(atomic_work, 1, prefix="after")
    run_worker(concurrency)
    assert effects() == Counter(["after0"])


@both_runners
@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_swallows_a_database_error_commits_nothing(concurrency):
    Call.objects.create(receiver="seed", key="seed", worker_pid=0)
    send(atomic_work, 1, swallow=True)
    run_worker(concurrency)
    assert not effects()
    event = Event.objects.get()
    assert event.status == "pending"
    assert "caught a database error" in event.last_error


@pytest.mark.django_db(transaction=True)
def test_a_timeout_rolls_the_receivers_writes_back_sequential():
    send(atomic_slow, 1, sleep=2)
    run_worker(1)
    assert not effects("atomic_slow")
    event = Event.objects.get()  # retried at once (no backoff in the tests) until out of attempts
    assert event.status in ("pending", "failed") and event.attempts >= 1
    assert event.last_error.startswith("ReceiverTimeout: ")


@pytest.mark.django_db(transaction=True)
def test_a_receiver_returning_after_its_timeout_in_a_thread_commits_nothing():
    """At concurrency N a sync receiver cannot be interrupted: its attempt is failed at its
    timeout, and when it returns its transaction must roll back, not commit "done"."""
    send(atomic_slow, 1, sleep=1.2)
    run_worker(2)
    assert not effects("atomic_slow"), "returned after its timeout: rolled back"
    event = Event.objects.get()  # retried at once (no backoff in the tests) until out of attempts
    assert event.status in ("pending", "failed") and event.attempts >= 1
    assert event.last_error.startswith("ReceiverTimeout: ")


@pytest.mark.django_db(transaction=True)
def test_a_receiver_in_time_at_concurrency_n_is_not_failed_after_it_commits():
    send(atomic_slow, 3, sleep=0.05)
    run_worker(3)
    assert effects("atomic_slow") == Counter(["k0", "k1", "k2"])
    assert set(Event.objects.values_list("status", "last_error")) == {("done", "")}


# --- outbox.testing.drain --------------------------------------------------------------------

in_both_test_modes = pytest.mark.parametrize(
    "transactional",
    [
        pytest.param(False, marks=pytest.mark.django_db, id="in_test_transaction"),
        pytest.param(True, marks=pytest.mark.django_db(transaction=True), id="transaction_true"),
    ],
)


@in_both_test_modes
def test_drain_runs_atomic_receivers_as_the_worker_does(transactional):
    send(atomic_work, 2)
    ran = testing.drain()
    assert [r.ok for r in ran] == [True, True]
    assert effects() == Counter(["k0", "k1"])
    assert set(Event.objects.values_list("status", flat=True)) == {"done"}


@in_both_test_modes
def test_drain_reraises_and_rolls_back_a_failed_atomic_receiver(transactional):
    send(atomic_work, 1, fail=True)
    with pytest.raises(ValueError, match="failed on purpose"):
        testing.drain()
    assert not effects()
    assert Event.objects.get().status == "pending"
    assert Call.objects.count() == 0 and connection.cursor()  # the test's transaction still works


# --- real worker processes under SIGKILL -----------------------------------------------------


@pytest.mark.parametrize("concurrency", ["1", "4"])
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_after_the_receivers_writes_loses_them_exactly_once(concurrency, worker_process):
    """Every first attempt writes its row, then kills the worker before its COMMIT. The
    atomic receiver's rows die with the transaction: one row per event in the end. The plain
    twin, same body, keeps the rows of the killed attempts: the duplicates atomic=True
    exists to prevent (this is what the test would see without it)."""
    n = 6
    send(atomic_work, n, die_first=True)
    send(plain_work, n, die_first=True)
    deaths = 0
    deadline = time.monotonic() + 300
    while Event.objects.exclude(status="done").exists():
        # A failed event ends the test at once: no worker would run it again (without
        # this, the loop started worker after worker until CI's timeout).
        failed = Event.objects.filter(status="failed").exists()
        assert not failed and deaths <= 6 * n and time.monotonic() < deadline, (
            f"the events never finished: {unfinished()}"
        )
        proc = worker_process(
            "--concurrency", concurrency, "--lease-seconds", "1", "--poll-interval", "0.2", ready=False
        )
        if _dies(proc):
            deaths += 1
        else:
            proc.stop()
    assert deaths >= 2, "the receivers killed their workers"
    assert effects() == Counter(f"k{i}" for i in range(n)), "exactly one effect per atomic event"
    assert sum(effects("plain").values()) > n, "the plain receiver's killed attempts left their writes"
    assert set(Event.objects.values_list("status", flat=True)) == {"done"}


def _dies(proc, timeout=30):
    """Wait for the worker to exit (a receiver killed it) or for every event to be done;
    True if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            return True
        if not Event.objects.exclude(status="done").exists():
            return False
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("concurrency", ["1", "4"])
@pytest.mark.django_db(transaction=True)
def test_chaos_sigkills_at_random_leave_exactly_one_effect_per_event(concurrency, worker_process):
    """Workers killed with SIGKILL at random moments, again and again, while atomic
    receivers write: every event ends done, with exactly one row written per event."""
    n = 150 if connection.vendor == "postgresql" else 80
    keys = send(atomic_work, n, pause=0.02 * int(concurrency))  # the same run time at each concurrency
    rng = random.Random(12)
    kills = 0
    deadline = time.monotonic() + 180
    while Event.objects.exclude(status="done").exists():
        failed = Event.objects.filter(status="failed").exists()
        assert not failed and time.monotonic() < deadline, f"the events never finished: {unfinished()}"
        proc = worker_process(
            "--concurrency",
            concurrency,
            "--batch-size",
            "10",
            "--lease-seconds",
            "1",
            "--poll-interval",
            "0.1",
        )
        if kills < 8:
            time.sleep(rng.uniform(0.2, 0.8))
            proc.signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            try:
                wait_for(lambda: not Event.objects.exclude(status="done").exists(), timeout=120)
            except AssertionError as exc:
                raise AssertionError(f"the events never finished: {unfinished()}") from exc
            proc.stop()
    assert kills >= 3, "the events finished before the kills began"
    counts = effects()
    assert set(counts) == set(keys), "an event's effect was lost"
    assert max(counts.values()) == 1, f"an effect happened twice: {counts.most_common(3)}"
