"""The worker in this process: retries, failures, bad rows, leases and fencing."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from outbox import queries
from outbox.execution import backoff_delay
from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import calls
from tests.testapp import receivers
from tests.testapp.models import Person
from tests.testapp.signals import followed, pinged

pytestmark = pytest.mark.django_db(transaction=True)


def insert_row(
    receiver="tests.testapp.receivers.on_followed", payload='{"sender": null, "kwargs": {}}', **extra
):
    """An event row written by hand, as an attacker or a bug might."""
    queries.insert_event(
        "default", extra.get("signal", "tests.testapp.signals.followed"), receiver, payload, 3
    )
    return Event.objects.order_by("-id").first()


def make_due(event_ids=None):
    """Skip the backoff wait: make every pending event due now."""
    events = Event.objects.filter(status="pending")
    if event_ids:
        events = events.filter(id__in=event_ids)
    events.update(available_at=timezone.now())


@override_settings(OUTBOX={"BACKOFF_BASE_SECONDS": 30})
def test_a_failing_receiver_is_retried_then_succeeds(drain):
    receivers.FAILURES["remaining"] = 2
    pinged.send(sender="x")
    drain()
    event = Event.objects.get()
    assert (event.status, event.attempts) == ("pending", 1)
    assert "the mail server is down" in event.last_error
    assert "RuntimeError" in event.last_traceback and "Traceback" in event.last_traceback
    assert event.available_at > timezone.now()
    make_due()
    drain()
    make_due()
    drain()
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("done", 3)
    assert len(calls("flaky")) == 1


def test_a_receiver_that_keeps_failing_ends_failed_after_its_max_attempts(drain):
    receivers.FAILURES["remaining"] = 99
    pinged.send(sender="x")
    for _ in range(5):
        make_due()
        drain()
    event = Event.objects.get()
    assert (event.status, event.attempts, event.max_attempts) == ("failed", 3, 3)
    assert event.finished_at is not None
    assert calls("flaky") == []


def test_a_failure_retries_only_its_own_receiver(drain):
    ada, bob = Person.objects.create(name="a"), Person.objects.create(name="b")
    receivers.FAILURES["remaining"] = 1
    followed.send(sender=ada, followed=bob)
    pinged.send(sender="x")
    drain()
    make_due()
    drain()
    assert len(calls("on_followed")) == 1 and len(calls("flaky")) == 1


@override_settings(OUTBOX={"BACKOFF_BASE_SECONDS": 2, "BACKOFF_MAX_SECONDS": 60})
def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    for attempt, full in [(1, 2), (2, 4), (3, 8), (6, 60), (30, 60)]:
        delays = [backoff_delay(attempt) for _ in range(200)]
        assert full / 2 <= min(delays) and max(delays) <= full
        assert len(set(delays)) > 1


GONE_PERSON = '{"sender": {"__outbox__": "model", "label": "testapp.Person", "pk": 9}, "kwargs": {}}'


@pytest.mark.parametrize(
    "row, error",
    [
        ({"receiver": "os.system"}, "receiver 'os.system' is not registered"),
        ({"receiver": "tests.testapp.receivers.renamed_since"}, "is not registered"),
        ({"signal": "tests.testapp.signals.nope"}, "signal 'tests.testapp.signals.nope' is not registered"),
        ({"payload": "[1, 2]"}, "not an object with 'sender' and 'kwargs'"),
        ({"payload": '{"sender": null}'}, "not an object with 'sender' and 'kwargs'"),
        ({"payload": '{"sender": {"__outbox__": "pickle", "v": "x"}, "kwargs": {}}'}, "unknown tag 'pickle'"),
        (
            {"payload": '{"sender": {"__outbox__": "model", "label": "nope.Model", "pk": 1}, "kwargs": {}}'},
            "unknown model 'nope.Model'",
        ),
        (
            {"payload": GONE_PERSON},
            "no longer exists and has no snapshot",
        ),
    ],
    ids=["os.system", "renamed", "unknown signal", "list", "shape", "tag", "model", "gone"],
)
def test_a_bad_row_is_failed_for_good_without_calling_anything(row, error, drain, monkeypatch):
    import os

    monkeypatch.setattr(os, "system", lambda *a: pytest.fail("os.system was called"))
    bad = insert_row(**row)
    pinged.send(sender="x")  # a good event behind it still runs
    drain()
    bad.refresh_from_db()
    assert bad.status == "failed" and bad.attempts == 1
    assert error in bad.last_error
    assert calls("on_followed") == []
    assert len(calls("flaky")) == 1


@pytest.mark.skipif(
    connection.vendor == "mysql",
    reason="MySQL/MariaDB keep the payload as plain text (migration 0009): the worker's check is the defence",
)
def test_the_database_itself_refuses_a_payload_that_is_not_json():
    from django.db import IntegrityError, transaction

    # jsonb on PostgreSQL, a JSON_VALID check on SQLite: the worker's own check for
    # invalid JSON is only a second line of defence.
    with pytest.raises((IntegrityError, *_data_errors())), transaction.atomic():
        insert_row(payload="{not json")


def _data_errors():
    from django.db import DataError

    return (DataError,)


@override_settings(OUTBOX={"BACKOFF_BASE_SECONDS": 30})
def test_a_receiver_raising_system_exit_is_a_failure_not_the_end_of_the_worker(drain):
    import outbox
    import tests.test_worker as here

    outbox.connect(pinged, here.exits, sender="exit")
    try:
        pinged.send(sender="exit")
        pinged.send(sender="after")
        assert drain() == 3  # exits, and flaky twice
        exits_event = Event.objects.get(receiver=f"{__name__}.exits")
        assert exits_event.status == "pending" and "SystemExit" in exits_event.last_error
        assert len(calls("flaky")) == 2
    finally:
        outbox.disconnect(pinged, here.exits, sender="exit")


def exits(sender, **kwargs):
    raise SystemExit(3)


def test_an_expired_lease_is_reclaimed_and_an_unexpired_one_is_not():
    pinged.send(sender="x")
    token, rows = queries.claim("default", 10, lease_seconds=60, worker="dead")
    assert len(rows) == 1
    assert queries.claim("default", 10, 60, "other")[1] == []
    Event.objects.update(available_at=timezone.now() - datetime.timedelta(seconds=1))
    token2, rows2 = queries.claim("default", 10, 60, "other")
    assert [r.id for r in rows2] == [rows[0].id]
    # Its worker may have died in another row's receiver: the attempt is given back, and the
    # row is to be run alone, which counts one.
    assert (rows2[0].attempts, rows2[0].alone) == (0, True)


def test_completion_is_fenced_on_the_claim_token():
    pinged.send(sender="x")
    late_token, rows = queries.claim("default", 10, 60, "late")
    Event.objects.update(available_at=timezone.now() - datetime.timedelta(seconds=1))
    new_token, _ = queries.claim("default", 10, 60, "rescuer")
    ids = [rows[0].id]
    assert queries.complete("default", late_token, ids) == 0
    assert queries.record_failure("default", late_token, ids[0], "late", "", None) == 0
    assert queries.release("default", late_token, ids) == 0
    assert queries.extend_lease("default", late_token, ids, 60) == 0
    assert Event.objects.get().status == "running"
    assert queries.complete("default", new_token, ids) == 1
    assert Event.objects.get().status == "done"


def test_a_row_reclaimed_past_its_max_attempts_is_failed_not_run_again(drain):
    pinged.send(sender="x")
    Event.objects.update(attempts=3, max_attempts=3, status="running")
    drain()
    event = Event.objects.get()
    assert event.status == "failed" and "gave up after 3 attempts" in event.last_error
    assert calls("flaky") == []


def test_stopping_mid_batch_releases_unstarted_rows_due_now():
    for i in range(5):
        pinged.send(sender=i)
    worker = Worker(once=True, listen=False)
    original = receivers.flaky

    def stop_after_two(sender, **kwargs):
        original(sender, **kwargs)
        if len(calls("flaky")) == 2:
            worker.stop()

    from outbox.registry import registry

    spec = registry.receivers["tests.testapp.receivers.flaky"]
    registry.receivers[spec.path] = type(spec)(spec.path, stop_after_two, spec.max_attempts)
    try:
        worker.run()
    finally:
        registry.receivers[spec.path] = spec
    statuses = sorted(Event.objects.values_list("status", "attempts"))
    assert statuses == [("done", 1)] * 2 + [("pending", 0)] * 3
    assert not Event.objects.filter(status="pending", available_at__gt=timezone.now()).exists()


@override_settings(OUTBOX={"BATCH_SIZE": 2})
def test_batch_size_setting_is_read_at_call_time():
    for i in range(5):
        pinged.send(sender=i)
    worker = Worker(listen=False)
    assert worker.batch_size == 2
    assert worker.run_batch() == 2


def test_an_idle_worker_keeps_its_connection_with_the_default_conn_max_age():
    from outbox.concurrent import recycle_connections as _close_broken_or_expired

    connection.ensure_connection()
    raw = connection.connection
    assert not connection.settings_dict.get("CONN_MAX_AGE")
    _close_broken_or_expired()
    assert connection.connection is raw, "a wake-up would reconnect before claiming"


def test_an_idle_worker_honours_a_positive_conn_max_age(monkeypatch):
    from outbox.concurrent import recycle_connections as _close_broken_or_expired

    connection.ensure_connection()
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 60)
    monkeypatch.setattr(connection, "close_at", 0.0)
    _close_broken_or_expired()
    assert connection.connection is None


def test_the_benchmark_floor_runs_the_completion_the_worker_runs():
    sent = []

    def remember(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    pinged.send(sender="x")
    token, rows = queries.claim("default", 10, 60, "w")
    with connection.execute_wrapper(remember):
        assert queries.complete("default", token, [r.id for r in rows]) == 1
    if connection.vendor == "postgresql":
        # The same statement, apart from the worker's asynchronous commit (which the floor,
        # committing synchronously, leaves out: see WORKER_ASYNC_COMMIT).
        assert sent == [queries.COMPLETE_POSTGRESQL + queries.ASYNC_COMMIT_POSTGRESQL]
