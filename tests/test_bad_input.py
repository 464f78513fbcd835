"""Bad input is refused at send time or fails its own event, never the worker."""

from __future__ import annotations

import signal
import sys
import time

import django
import pytest
from django.contrib.sessions.models import Session
from django.db import connection, transaction
from django.db.models.functions import Upper
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from outbox import PayloadTooLarge, SerializationError
from outbox.conf import settings
from outbox.models import Event
from tests.conftest import calls, postgres_only, skip_locked_only, wait_for
from tests.testapp.faults import PROBES, hang, hang_in_database, misbehave, spin
from tests.testapp.models import Call, Person
from tests.testapp.signals import followed, work

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def _clear_probes():
    PROBES.clear()
    yield
    PROBES.clear()


def _row(receiver="tests.testapp.faults.probe_a", signal="tests.testapp.faults.probe", payload=None):
    """An event written by hand, as a bad migration, a manual INSERT or an old deploy would."""
    now = timezone.now()
    if payload is None:
        payload = {"sender": None, "kwargs": {"n": 1}}
    return Event.objects.create(
        signal=signal,
        receiver=receiver,
        payload=payload,
        max_attempts=5,
        available_at=now,
        created_at=now,
    )


# --- at send time ----------------------------------------------------------------------


def test_an_argument_that_cannot_be_encoded_raises_at_send_and_writes_nothing():
    with transaction.atomic():
        Person.objects.create(name="kept")
        with pytest.raises(SerializationError, match=r"key is a object .*cannot be stored as JSON"):
            work.send(sender=None, key=object())
        # The transaction is still usable: nothing was sent to the database for the bad send.
        assert Person.objects.count() == 1
    assert Event.objects.count() == 0
    assert Person.objects.count() == 1


def test_a_send_that_cannot_be_encoded_can_still_be_rolled_back():
    with pytest.raises(SerializationError), transaction.atomic():
        Person.objects.create(name="rolled back")
        work.send(sender=None, key="fine")
        work.send(sender=None, key={1, object()})
    assert Event.objects.count() == 0
    assert Person.objects.count() == 0


def test_the_error_names_the_receiver_the_signal_and_the_argument():
    with pytest.raises(SerializationError) as info:
        work.send(sender=None, key=lambda: None)
    message = str(info.value)
    assert "tests.testapp.receivers.record" in message
    assert "tests.testapp.signals.work" in message
    assert "key is a function" in message
    assert Event.objects.count() == 0


def test_a_payload_over_max_payload_bytes_is_refused_at_send():
    with override_settings(OUTBOX={**_outbox(), "MAX_PAYLOAD_BYTES": 1000}):
        work.send(sender=None, key="x" * 900)
        with pytest.raises(PayloadTooLarge, match=r'more than OUTBOX\["MAX_PAYLOAD_BYTES"\] = 1000'):
            work.send(sender=None, key="x" * 1000)
    assert Event.objects.count() == 1


def test_the_default_limit_is_one_mebibyte_counted_in_encoded_bytes():
    assert settings.MAX_PAYLOAD_BYTES == 1024 * 1024
    with pytest.raises(PayloadTooLarge):
        # 300,000 characters, but 1.2 MB once encoded as UTF-8.
        work.send(sender=None, key="€" * 400_000)
    work.send(sender=None, key="x" * 1_000_000)
    assert Event.objects.count() == 1


def test_a_nul_character_from_a_form_leaves_the_senders_transaction_usable(drain):
    # PostgreSQL's jsonb refuses \u0000: written as it is, the INSERT would fail and abort
    # the sender's whole transaction, losing its own writes.
    form = {"comment": "hello\x00world", "field\x00": ["\x00"]}
    with transaction.atomic():
        Person.objects.create(name="before")
        followed.send(sender=None, form=form)
        Person.objects.create(name="after")
    assert sorted(Person.objects.values_list("name", flat=True)) == ["after", "before"]
    drain()
    ((_, _, kwargs),) = calls("on_followed")
    assert kwargs["form"] == form and list(kwargs["form"]) == list(form)


UNWRITABLE = {
    "a lone surrogate": ({"x": ["fine", "bad \udc80"]}, r"note\['x'\]\[1\] holds a lone surrogate"),
    "a lone surrogate in a key": ({"ok": 1, "\ud800": 2}, r"note key '\\ud800' holds a lone surrogate"),
    "a lone surrogate in a tuple": (("\udfff",), r"note\[0\] holds a lone surrogate"),
    "an int over the digit limit": ([0, 10**5000], r"note\[1\] is an int of 5001 digits"),
    "a negative int over the digit limit": (-(10**4300), r"note is an int of 4301 digits"),
}


@pytest.mark.parametrize("case", list(UNWRITABLE))
def test_a_value_that_cannot_be_written_raises_a_serialization_error_naming_it(case):
    value, message = UNWRITABLE[case]
    with transaction.atomic():
        Person.objects.create(name="before")
        with (
            CaptureQueriesContext(connection) as queries,
            pytest.raises(SerializationError, match=message) as info,
        ):
            work.send(sender=None, key="bad", note=value)
        assert "tests.testapp.signals.work" in str(info.value)
        assert queries.captured_queries == []
        # Raised before any SQL: the transaction goes on and commits its own writes.
        Person.objects.create(name="after")
    assert Person.objects.count() == 2
    assert Event.objects.count() == 0


def test_a_lone_surrogate_in_the_sender_is_named():
    with pytest.raises(SerializationError, match=r"sender holds a lone surrogate"):
        work.send(sender="\udc80", key="bad")
    assert Event.objects.count() == 0


def _outbox():
    from django.conf import settings as django_settings

    return dict(getattr(django_settings, "OUTBOX", {}))


# --- rows the worker cannot run --------------------------------------------------------


def _nested(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


BAD_ROWS = {
    "payload that is not an object": (
        {"payload": ["not", "an", "object"]},
        "the payload is not an object with 'sender' and 'kwargs'",
    ),
    "payload that is a JSON string": ({"payload": "{not json"}, "the payload is not"),
    "payload with an unknown tag": (
        {"payload": {"sender": None, "kwargs": {"n": {"__outbox__": "pickle", "v": "gASV"}}}},
        "unknown tag 'pickle'",
    ),
    "payload with a malformed value": (
        {"payload": {"sender": None, "kwargs": {"n": {"__outbox__": "datetime", "v": "noon"}}}},
        "the payload cannot be decoded",
    ),
    "payload nested too deeply": (
        {"payload": {"sender": None, "kwargs": {"n": _nested(200)}}},
        "the payload is nested too deeply",
    ),
    "unknown receiver": (
        {"receiver": "tests.testapp.faults.gone"},
        "receiver 'tests.testapp.faults.gone' is not registered in this worker process",
    ),
    "unknown signal": (
        {"signal": "tests.testapp.faults.gone"},
        "signal 'tests.testapp.faults.gone' is not registered",
    ),
    "unknown model label": (
        {"payload": {"sender": {"__outbox__": "modelclass", "label": "shop.Order"}, "kwargs": {"n": 1}}},
        "the payload names the unknown model 'shop.Order'",
    ),
    "instance whose row is gone and has no snapshot": (
        {
            "payload": {
                "sender": None,
                "kwargs": {"n": {"__outbox__": "model", "label": "testapp.Person", "db": None, "pk": 10**9}},
            }
        },
        "testapp.Person with pk 1000000000 no longer exists and has no snapshot",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_fails_with_a_readable_error_and_the_batch_goes_on(case, drain):
    fields, error = BAD_ROWS[case]
    before = _row(payload={"sender": None, "kwargs": {"n": 1}})
    bad = _row(**fields)
    after = _row(payload={"sender": None, "kwargs": {"n": 2}})
    drain()
    bad.refresh_from_db()
    assert bad.status == "failed", bad.last_error
    assert error in bad.last_error
    assert bad.attempts == 1, "a row that can never run is not retried"
    assert Event.objects.get(pk=before.pk).status == "done"
    assert Event.objects.get(pk=after.pk).status == "done"
    assert sorted(PROBES) == [("probe_a", 1), ("probe_a", 2)]


BAD_REFERENCES = {
    "a string for an integer key": "abc",
    "a dict": {"a": 1},
    "a list": [1],
    "a tuple": {"__outbox__": "tuple", "v": [1, 2]},
    "an integer too large for the column": 2**70,
}


@pytest.mark.parametrize("case", list(BAD_REFERENCES))
def test_a_bad_model_reference_fails_alone_and_the_others_get_fresh_rows(case, drain):
    ada, bob = Person.objects.create(name="ada"), Person.objects.create(name="bob")
    followed.send(sender=None, who=ada)
    bad = _row(
        signal="tests.testapp.signals.followed",
        receiver="tests.testapp.receivers.on_followed",
        payload={
            "sender": None,
            "kwargs": {
                "who": {
                    "__outbox__": "model",
                    "label": "testapp.Person",
                    "db": "default",
                    "pk": BAD_REFERENCES[case],
                    "fields": {"name": "snapshot"},
                }
            },
        },
    )
    followed.send(sender=None, who=bob)
    # Changed after the sends: the worker must fetch these rows, not use the snapshots.
    Person.objects.filter(pk__in=[ada.pk, bob.pk]).update(name=Upper("name"))
    drain()
    assert sorted(kwargs["who"].name for _, _, kwargs in calls("on_followed")) == ["ADA", "BOB"]
    assert Event.objects.filter(status="done").count() == 2
    bad.refresh_from_db()
    assert bad.status == "failed"
    too_large = case == "an integer too large for the column"
    if too_large and connection.vendor == "sqlite" and django.VERSION < (5,):
        # Django 4.2 gives SQLite no integer range to check a key against (5.0 does): the
        # database refuses the fetch instead, and the event fails alone all the same.
        assert bad.last_error.startswith("DispatchError: testapp.Person with the primary key ")
        assert "cannot be fetched: OverflowError" in bad.last_error
    else:
        assert bad.last_error.startswith("DispatchError: testapp.Person cannot have the primary key")


@postgres_only
def test_a_key_the_database_refuses_fails_alone_and_the_others_get_fresh_rows(drain):
    # A str key may hold NUL, which PostgreSQL refuses in a query: the batch's one query
    # for the model fails, and is retried key by key so the others still get their rows.
    now = timezone.now()
    sessions = [Session.objects.create(session_key=k, session_data="old", expire_date=now) for k in "ab"]
    for session in sessions:
        followed.send(sender=None, who=session)
    ref = {"__outbox__": "model", "label": "sessions.Session", "db": "default"}
    bad = _row(
        signal="tests.testapp.signals.followed",
        receiver="tests.testapp.receivers.on_followed",
        payload={"sender": None, "kwargs": {"who": {**ref, "pk": {"__outbox__": "nul", "v": ["b", "d"]}}}},
    )
    Session.objects.update(session_data="fresh")
    drain()
    assert [kwargs["who"].session_data for _, _, kwargs in calls("on_followed")] == ["fresh", "fresh"]
    bad.refresh_from_db()
    assert bad.status == "failed"
    assert bad.last_error.startswith(
        "DispatchError: sessions.Session with the primary key 'b\\x00d' cannot be fetched"
    )


def test_a_payload_nested_deeper_than_the_json_parser_goes_fails_alone(drain):
    # Both databases accept 990 levels of JSON. Up to Python 3.11 the parser's C frames count
    # against the recursion limit (1000, the worker's own frames included), so this row cannot
    # even be parsed in the worker; from 3.12 they have a limit of their own, and the payload
    # decoder's depth limit refuses it instead.
    before = _row(payload={"sender": None, "kwargs": {"n": 1}})
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    deep = "[" * 990 + "]" * 990
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO outbox_event ({connection.ops.quote_name('signal')}, receiver, payload, status, "
            "attempts, max_attempts, "
            "available_at, worker, created_at, last_error, last_traceback) "
            "VALUES (%s, %s, %s, 'pending', 0, 5, %s, '', %s, '', '')",
            [
                "tests.testapp.faults.probe",
                "tests.testapp.faults.probe_a",
                '{"sender": null, "kwargs": {"n": ' + deep + "}}",
                now,
                now,
            ],
        )
    after = _row(payload={"sender": None, "kwargs": {"n": 2}})
    drain()
    bad = Event.objects.exclude(pk__in=[before.pk, after.pk]).values("status", "last_error").get()
    assert bad["status"] == "failed"
    if sys.version_info >= (3, 12):
        assert bad["last_error"] == "DispatchError: the payload is nested too deeply"
    else:
        assert bad["last_error"].startswith("DispatchError: the payload is not valid JSON")
    assert sorted(PROBES) == [("probe_a", 1), ("probe_a", 2)]


def test_a_worker_process_fails_every_bad_row_and_keeps_draining(worker_process):
    bad = [_row(**fields).pk for fields, _ in BAD_ROWS.values()]
    for i in range(5):
        work.send(sender=None, key=f"good-{i}")
    worker = worker_process("--poll-interval", "0.1")
    wait_for(lambda: Call.objects.count() == 5)
    wait_for(lambda: Event.objects.filter(status="done").count() == 5)
    wait_for(lambda: Event.objects.filter(pk__in=bad, status="failed").count() == len(bad))
    assert worker.process.poll() is None, "the worker is still running"
    for event in Event.objects.filter(pk__in=bad):
        assert event.last_error and "Traceback" in event.last_traceback


# --- receivers that misbehave ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_a_receiver_raising_a_base_exception_fails_its_event_not_the_worker(kind, worker_process):
    with transaction.atomic():
        work.send(sender=None, key="before")
        misbehave.send(sender=None, kind=kind)
        for i in range(3):
            work.send(sender=None, key=f"after-{i}")
    worker = worker_process("--poll-interval", "0.1", "--batch-size", "10")
    wait_for(lambda: Event.objects.filter(status__in=["done", "failed"]).count() == 5)
    assert worker.process.poll() is None, "the worker is still running"
    failed = Event.objects.get(signal="tests.testapp.faults.misbehave")
    assert failed.status == "failed"
    assert failed.last_error.startswith(kind)
    assert sorted(Call.objects.values_list("key", flat=True)) == ["after-0", "after-1", "after-2", "before"]
    assert not Event.objects.filter(status__in=["running", "pending"]).exists()
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


@pytest.mark.parametrize("sig", [hang, spin], ids=["blocked in a system call", "busy in Python"])
def test_a_hanging_receiver_is_stopped_by_its_timeout(sig, worker_process):
    with transaction.atomic():
        sig.send(sender=None)
        work.send(sender=None, key="next")
    started = time.monotonic()
    worker = worker_process("--poll-interval", "0.1")
    wait_for(lambda: Call.objects.filter(key="next").exists(), timeout=30)
    elapsed = time.monotonic() - started
    hung = Event.objects.exclude(signal="tests.testapp.signals.work").get()
    assert hung.status == "failed"
    assert hung.last_error == "ReceiverTimeout: the receiver ran longer than its timeout of 0.5s"
    # The timeout is 0.5 s; the rest is process start-up on a busy machine.
    assert elapsed < 20
    assert worker.process.poll() is None


@skip_locked_only
def test_a_receiver_hanging_in_a_query_is_stopped_and_the_worker_goes_on(worker_process):
    with transaction.atomic():
        hang_in_database.send(sender=None)
        work.send(sender=None, key="next")
    worker = worker_process("--poll-interval", "0.1")
    wait_for(lambda: Call.objects.filter(key="next").exists(), timeout=30)
    hung = Event.objects.get(signal="tests.testapp.faults.hang_in_database")
    assert hung.status == "failed"
    assert hung.last_error.startswith("ReceiverTimeout")
    # Written done by the worker's next claim, a moment after the receiver's own write.
    wait_for(lambda: Event.objects.get(signal="tests.testapp.signals.work").status == "done", timeout=10)
    assert worker.process.poll() is None
    # The query was cancelled on the server, not left running behind a closed connection.
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute(
                "SELECT count(*) FROM information_schema.processlist WHERE info LIKE 'SELECT SLEEP(3600)%%'"
            )
        else:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3600)%%'")
        assert cursor.fetchone()[0] == 0
