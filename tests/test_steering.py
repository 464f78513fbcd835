"""Receivers that steer their own delivery: ``raise outbox.RetryAfter(seconds)``,
``raise outbox.PermanentFailure(msg)``, and ``outbox.current_event()``."""

from __future__ import annotations

import datetime
import json
import logging
import time

import pytest
from django.db import transaction
from django.test import override_settings

import outbox
from outbox.models import Event
from outbox.queries import database_now, parked
from tests.conftest import calls, wait_for
from tests.operating import run
from tests.testapp.steering import (
    doomed,
    doomed_keyed,
    keyed_later,
    later,
    looked,
    relayed,
    seen,
    steered_now,
)

pytestmark = pytest.mark.django_db(transaction=True)

RETRY_LATER = "tests.testapp.steering.retry_later"
ARETRY_LATER = "tests.testapp.steering.aretry_later"
GIVE_UP = "tests.testapp.steering.give_up"
LOOK = "tests.testapp.steering.look"
ALOOK = "tests.testapp.steering.alook"


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "seen.jsonl")


def send(signal, **kwargs):
    with transaction.atomic():
        signal.send(sender=None, **kwargs)


def event(receiver, key=None):
    found = [e for e in Event.objects.filter(receiver=receiver) if key is None or key == _key(e)]
    assert len(found) == 1, found
    return found[0]


def _key(row):
    payload = json.loads(row.payload) if isinstance(row.payload, str) else row.payload
    return payload["kwargs"]["key"]


def ahead(row, since, until):
    """How far ``row.available_at`` lies past the (database) clock's reading at ``since``
    and at ``until``, the readings taken before and after the attempt was recorded."""
    return (row.available_at - since).total_seconds(), (row.available_at - until).total_seconds()


# --- RetryAfter ------------------------------------------------------------------------


def test_retry_after_120_is_not_retried_before_120_seconds_by_the_database_clock(drain, path):
    for n in range(5):
        send(later, key=f"k{n}", path=path, seconds=120)
    before = database_now("default")
    drain()
    after = database_now("default")
    for row in Event.objects.all():
        assert row.status == "pending"
        assert row.attempts == 1
        since_before, since_after = ahead(row, before, after)
        # Never sooner than asked (the attempt was recorded after `before`); jitter only
        # upwards, at most a tenth (12 s, and the attempt was recorded before `after`).
        assert since_before >= 120, since_before
        assert since_after <= 132, since_after
    assert event(RETRY_LATER, "k0").last_error == "RetryAfter: retry after 120s: the API said 429 for k0"
    assert event(ARETRY_LATER, "k0").last_error == "RetryAfter: retry after 120s"
    assert drain() == 0  # not due: nothing runs again now
    assert len(seen(path)) == 10


@override_settings(OUTBOX={"RETRY_AFTER_MAX_SECONDS": 300})
def test_a_longer_retry_after_is_clamped_to_the_setting_with_a_warning(drain, path, caplog):
    send(later, key="k", path=path, seconds=10**9)
    before = database_now("default")
    with caplog.at_level(logging.WARNING, logger="outbox"):
        drain()
    after = database_now("default")
    for receiver in (RETRY_LATER, ARETRY_LATER):
        row = event(receiver)
        since_before, since_after = ahead(row, before, after)
        assert since_before >= 300 and since_after <= 330, (since_before, since_after)
        assert (
            f"event {row.id} {receiver} asked to retry after 1e+09s, longer than "
            f"RETRY_AFTER_MAX_SECONDS: retry after 300s"
        ) in caplog.text


def test_retry_after_counts_attempts_and_the_last_one_fails_the_event(drain, path):
    send(later, key="k", path=path, seconds=0, until_attempt=99)
    for _ in range(5):
        drain()  # RetryAfter(0): due again at once
    for receiver in (RETRY_LATER, ARETRY_LATER):
        row = event(receiver)
        assert (row.status, row.attempts, row.max_attempts) == ("failed", 3, 3)
        assert row.last_error.startswith("RetryAfter: retry after 0s")
        assert row.finished_at is not None
        attempts = [s["event"]["attempt"] for s in seen(path) if s["event"]["receiver"] == receiver]
        assert attempts == [1, 2, 3]


def test_retry_after_takes_a_timedelta_and_refuses_what_is_no_wait():
    assert outbox.RetryAfter(datetime.timedelta(minutes=2)).seconds == 120
    assert isinstance(outbox.RetryAfter(1), outbox.OutboxError)
    with pytest.raises(ValueError, match="0 seconds or more"):
        outbox.RetryAfter(-1)
    for bad in (float("nan"), float("inf"), "120", None, True):
        with pytest.raises(TypeError, match="finite number of seconds or a timedelta"):
            outbox.RetryAfter(bad)


@override_settings(OUTBOX={"BACKOFF_BASE_SECONDS": 60})
def test_a_receiver_raising_retry_after_wrongly_is_an_ordinary_failure(drain, path):
    send(later, key="k", path=path, seconds=-5)  # RetryAfter(-5) raises ValueError
    drain()
    row = event(RETRY_LATER)
    assert row.status == "pending" and row.attempts == 1
    assert row.last_error == "ValueError: RetryAfter takes a wait of 0 seconds or more, not -5"


def test_a_keyed_retry_after_keeps_the_later_events_of_its_key_waiting(drain, path):
    send(keyed_later, account="a", step=1, path=path, seconds=60)
    send(keyed_later, account="a", step=2, path=path)
    send(keyed_later, account="b", step=1, path=path, seconds=60)
    send(keyed_later, account="c", step=2, path=path)
    for _ in range(3):
        drain()
    ran = [s["key"] for s in seen(path)]
    assert sorted(ran) == ["a:1", "b:1", "c:2"]  # a:2 waits behind a:1's retry
    first, second = Event.objects.filter(ordering_key="a").order_by("id")
    assert first.status == "pending" and first.available_at > database_now("default")
    assert (second.status, second.attempts) == ("pending", 0)
    # Its wait over, a:1 runs again and then a:2, in that order.
    Event.objects.filter(status="pending").update(available_at=database_now("default"))
    for _ in range(3):
        drain()
    ran = [s["key"] for s in seen(path)]
    assert ran[3:] in (["a:1", "a:2", "b:1"], ["a:1", "b:1", "a:2"], ["b:1", "a:1", "a:2"])
    assert set(Event.objects.values_list("status", flat=True)) == {"done"}


# --- PermanentFailure ------------------------------------------------------------------


def test_permanent_failure_fails_at_once_with_its_message_and_no_retry(drain, path, caplog):
    send(doomed, key="4242", path=path)
    with caplog.at_level(logging.WARNING, logger="outbox"):
        for _ in range(3):
            drain()
    row = event(GIVE_UP)
    assert (row.status, row.attempts, row.max_attempts) == ("failed", 1, 5)
    assert row.last_error == "PermanentFailure: card 4242 was declined for good"
    assert "PermanentFailure: card 4242 was declined for good" in row.last_traceback
    assert row.finished_at is not None
    assert len(seen(path)) == 1
    assert f"event {row.id} {GIVE_UP} failed for good" in caplog.text
    # A replay runs it again, under the same idempotency key.
    assert run("outbox_replay", "--receiver", GIVE_UP).out == "replay: 1 changed (1 failed)\n"
    drain()
    assert [s["event"]["idempotency_key"] for s in seen(path)] == [f"outbox-{row.id}"] * 2
    assert event(GIVE_UP).status == "failed"


def test_a_keyed_permanent_failure_parks_its_key(drain):
    send(doomed_keyed, key="k1")
    send(doomed_keyed, key="k1")
    drain()
    rows = list(Event.objects.filter(ordering_key="k1").order_by("id"))
    assert [(r.status, r.attempts) for r in rows] == [("failed", 1), ("pending", 0)]
    assert rows[0].last_error == "PermanentFailure: k1 is broken"
    assert rows[1].available_at == parked()


# --- on_commit receivers ---------------------------------------------------------------


def test_on_commit_receivers_raising_either_are_only_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="outbox"), transaction.atomic():
        steered_now.send(sender=None)
    assert not Event.objects.exists()
    assert sorted(name for name, _ in calls()) == ["give_up_now", "retry_now"]
    assert [event for _, event in calls()] == [None, None]  # no event row: no current event
    assert "on_commit receiver tests.testapp.steering.retry_now raised RetryAfter" in caplog.text
    assert "on_commit receiver tests.testapp.steering.give_up_now raised PermanentFailure" in caplog.text


def test_an_on_commit_receiver_run_inside_a_deferred_one_sees_no_current_event(drain):
    send(relayed)
    drain()
    assert event("tests.testapp.steering.relay_steered").status == "done"
    [(_, outer)] = calls("relay_steered")
    assert outer is not None and outer.receiver == "tests.testapp.steering.relay_steered"
    assert [event for name, event in calls() if name != "relay_steered"] == [None, None]


# --- current_event() -------------------------------------------------------------------


def test_current_event_is_none_outside_a_worker(drain, path):
    assert outbox.current_event() is None
    send(looked, key="k", path=path)
    drain()
    assert outbox.current_event() is None
    assert len(seen(path)) == 4


def check_seen(path, attempts):
    """Each note names the event whose payload carries its key, with every field right."""
    notes = seen(path)
    assert notes
    for note in notes:
        info, receiver = note["event"], (ALOOK if note.get("kind") == "async" else LOOK)
        row = event(receiver, note["key"])
        assert info == {
            "id": row.id,
            "attempt": info["attempt"],
            "max_attempts": 4,
            "signal": "tests.testapp.steering.looked",
            "receiver": receiver,
            "queue": "default",
            "ordering_key": None,
            "created_at": row.created_at.isoformat(),
            "idempotency_key": f"outbox-{row.id}",
        }
    by_event: dict[int, list[int]] = {}
    for note in notes:
        if note["at"] == "start":
            by_event.setdefault(note["event"]["id"], []).append(note["event"]["attempt"])
    assert sorted(by_event.values()) == sorted(attempts for _ in by_event)
    return notes


def test_current_event_is_right_on_the_first_try_on_a_retry_and_after_a_replay(drain, path):
    send(looked, key="k", path=path, fail_first=True)
    for _ in range(3):
        drain()
        time.sleep(0.1)  # the retry's backoff (tests/settings.py: at most 0.05 s)
    assert set(Event.objects.values_list("status", flat=True)) == {"done"}
    check_seen(path, [1, 2])
    before = len(seen(path))
    looked_name = "tests.testapp.steering.looked"
    result = run("outbox_replay", "--status", "done", "--include-done", "--signal", looked_name)
    assert result.out == "replay: 2 changed (2 done)\n"
    for _ in range(3):
        drain()
        time.sleep(0.1)
    notes = check_seen(path, [1, 2, 1, 2])  # a replay counts its attempts anew
    assert len(notes) == 2 * before
    keys = {(n["event"]["receiver"], n["event"]["idempotency_key"]) for n in notes}
    assert len(keys) == 2  # one key per event, through retry and replay


def test_current_event_is_right_in_a_relayed_task(path):
    pytest.importorskip("django_q")
    from outbox.dispatch import django_q2
    from tests.test_relay import queued_tasks, relay_once

    send(looked, key="k", path=path)
    relay_once()
    [task] = queued_tasks()
    assert django_q2.run_relayed(*task["args"]) == 2
    check_seen(path, [1])


# --- in real worker processes ----------------------------------------------------------


def _all_done():
    statuses = set(Event.objects.values_list("status", flat=True))
    return statuses == {"done"}


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_each_receiver_sees_its_own_event_in_a_worker_process(concurrency, worker_process, path):
    for n in range(6):
        send(looked, key=f"k{n}", path=path, hold=0.2, fail_first=True)
    proc = worker_process("--concurrency", concurrency)
    wait_for(_all_done, timeout=60)
    # Sync receivers in threads and async ones as tasks ran side by side at concurrency 4,
    # each noting its event before and after its hold: none saw another's.
    notes = check_seen(path, [1, 2])
    assert len(notes) == 6 * 2 * 2 * 2
    assert {n["pid"] for n in notes} == {proc.process.pid}
    proc.signal()
    assert proc.wait() == 0, proc.output


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_retry_after_in_a_worker_process_waits_before_the_next_attempt(concurrency, worker_process, path):
    for n in range(3):
        send(later, key=f"k{n}", path=path, seconds=2)
    proc = worker_process("--concurrency", concurrency)
    wait_for(_all_done, timeout=60)
    notes = seen(path)
    for row in Event.objects.all():
        assert row.attempts == 2
        tries = [n for n in notes if n["event"]["id"] == row.id]
        assert [n["event"]["attempt"] for n in tries] == [1, 2]
        assert {n["event"]["idempotency_key"] for n in tries} == {f"outbox-{row.id}"}
        assert tries[1]["t"] - tries[0]["t"] >= 2.0
    assert {n.get("kind", "sync") for n in notes} == {"sync", "async"}
    proc.signal()
    assert proc.wait() == 0, proc.output


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_permanent_failure_in_a_worker_process_fails_at_once(concurrency, worker_process, path):
    send(doomed, key="4242", path=path)
    send(doomed_keyed, key="k1")
    send(doomed_keyed, key="k1")
    proc = worker_process("--concurrency", concurrency)
    wait_for(lambda: Event.objects.filter(status="failed").count() == 2, timeout=60)
    time.sleep(0.5)  # several polls: nothing runs it again
    row = event(GIVE_UP)
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error == "PermanentFailure: card 4242 was declined for good"
    assert len(seen(path)) == 1
    first, second = Event.objects.filter(ordering_key="k1").order_by("id")
    assert (first.status, first.attempts, second.status, second.attempts) == ("failed", 1, "pending", 0)
    assert second.available_at == parked()
    proc.signal()
    assert proc.wait() == 0, proc.output
    assert f"event {row.id} {GIVE_UP} failed for good" in proc.output


def test_current_event_is_set_under_outbox_testing_drain(path):
    # Users test their receivers with outbox.testing.drain(), which runs them in-process.
    from outbox.testing import drain as testing_drain

    send(looked, key="k", path=path)
    ran = testing_drain()
    assert len(ran) == 2 and all(r.ok for r in ran)
    check_seen(path, [1])
