"""Receiver options evaluated at send time: when= (no row), delay= (not before) and
dedupe_key= (coalescing while pending)."""

from __future__ import annotations

import datetime
import threading

import pytest
from django.db import connection, connections, transaction
from django.db.models.signals import m2m_changed, post_save
from django.test.utils import CaptureQueriesContext

import outbox
from outbox import operations, queries
from outbox.exceptions import RegistrationError, SerializationError
from outbox.models import Event
from outbox.registry import registry
from outbox.wakeup import Listener
from tests.conftest import calls, postgres_only, wait_for
from tests.testapp import steered as st
from tests.testapp.models import Person
from tests.testapp.signals import steered

pytestmark = pytest.mark.django_db(transaction=True)

S = Event.Status
GATED, UNGATED = "tests.testapp.steered.gated", "tests.testapp.steered.ungated"
REINDEX, REINDEX_TOO = "tests.testapp.steered.reindex", "tests.testapp.steered.reindex_too"


@pytest.fixture
def connect():
    """outbox.connect() for one test: disconnected after it, whatever happens."""
    connected = []

    def run(signal, func, **options):
        outbox.connect(signal, func, **options)
        connected.append((signal, func, options))

    yield run
    for signal, func, options in connected:
        delivery = options.get("delivery", "outbox")
        outbox.disconnect(signal, func, sender=options.get("sender"), delivery=delivery)
        # Forgotten by path too, so that another test may connect it with other options.
        registry.receivers.pop(f"{func.__module__}.{func.__qualname__}", None)


def rows(receiver=None, **filters):
    events = Event.objects.filter(**filters).order_by("id")
    return list(events if receiver is None else events.filter(receiver=receiver))


# --- when= ----------------------------------------------------------------------------


def test_a_false_predicate_writes_no_row_and_runs_no_statement(connect):
    connect(steered, st.gated, when=st.go)
    with CaptureQueriesContext(connection) as queries_run:
        steered.send(sender=None, go=False)
    assert len(queries_run) == 0
    assert rows() == []
    with CaptureQueriesContext(connection) as queries_run:
        steered.send(sender=None, go=True)
    assert len(queries_run) == 1
    assert [e.receiver for e in rows()] == [GATED]


def test_receivers_a_predicate_turns_away_are_left_out_of_the_one_insert(connect, drain):
    connect(steered, st.gated, when=st.go)
    connect(steered, st.ungated)
    with CaptureQueriesContext(connection) as queries_run:
        steered.send(sender=None, go=False)
    assert len(queries_run) == 1
    assert [e.receiver for e in rows()] == [UNGATED]
    drain()
    assert [c[0] for c in calls()] == ["ungated"]


def test_post_save_with_created_only_runs_for_new_rows_alone(connect, drain):
    connect(post_save, st.on_created, sender=Person, when=st.created_only)
    ann = Person.objects.create(name="ann")
    ann.name = "ann b"
    ann.save()
    Person.objects.create(name="bob")
    assert len(rows("tests.testapp.steered.on_created")) == 2
    drain()
    # (the instance is fetched again when the receiver runs: the latest name)
    assert [c[2] for c in calls("on_created")] == [
        {"name": "ann b", "created": True},
        {"name": "bob", "created": True},
    ]


def test_m2m_changed_with_post_add_only_writes_one_row_per_add(connect, drain):
    connect(m2m_changed, st.on_added, sender=Person.following.through, when=st.post_add_only)
    ann, bob, cy = (Person.objects.create(name=n) for n in ("ann", "bob", "cy"))
    ann.following.add(bob)
    ann.following.add(cy)
    ann.following.remove(bob)
    assert len(rows("tests.testapp.steered.on_added")) == 2
    drain()
    assert [c[2] for c in calls("on_added")] == [
        {"action": "post_add", "pk_set": [bob.pk]},
        {"action": "post_add", "pk_set": [cy.pk]},
    ]


def test_a_predicate_that_raises_names_the_receiver_and_leaves_the_transaction_usable(connect):
    connect(steered, st.gated, when=st.broken_predicate)
    connect(steered, st.ungated)
    with transaction.atomic():
        with pytest.raises(LookupError, match="the predicate's own bug") as raised:
            steered.send(sender=None)
        assert any(GATED in note for note in raised.value.__notes__)
        # Nothing ran before the predicate: the transaction goes on (PostgreSQL would
        # refuse every statement of an aborted one).
        Person.objects.create(name="after")
    assert rows() == []
    assert Person.objects.filter(name="after").exists()


def test_an_on_commit_receiver_is_turned_away_by_its_predicate_too(connect):
    connect(steered, st.gated, delivery="on_commit", when=st.go)
    with transaction.atomic():
        steered.send(sender=None, go=False)
        steered.send(sender=None, go=True)
    assert len(calls("gated")) == 1


# --- delay= ---------------------------------------------------------------------------


def test_a_delayed_event_is_not_claimed_before_its_time_and_is_after(connect):
    connect(steered, st.reminder, delay=1.5)
    steered.send(sender=None)
    (event,) = rows()
    # Written by the database's clock on PostgreSQL: created_at and available_at come from
    # one statement_timestamp().
    assert event.available_at - event.created_at == datetime.timedelta(seconds=1.5)
    token, claimed = queries.claim("default", 10, 60, "test")
    assert claimed == []
    wait_for(lambda: queries.database_now("default") >= event.available_at, timeout=10)
    token, claimed = queries.claim("default", 10, 60, "test")
    assert [c.id for c in claimed] == [event.id]


def test_a_delay_may_be_a_timedelta(connect):
    connect(steered, st.reminder, delay=datetime.timedelta(minutes=10))
    steered.send(sender=None)
    (event,) = rows()
    assert event.available_at - event.created_at == datetime.timedelta(minutes=10)


def test_delayed_keyed_events_still_run_in_send_order(connect):
    connect(steered, st.keyed_reminder, delay=1, ordering_key=st.by_product)
    steered.send(sender=None, product=5)
    steered.send(sender=None, product=5)
    first, second = rows()
    assert queries.claim("default", 10, 60, "test")[1] == []
    wait_for(lambda: queries.database_now("default") >= second.available_at, timeout=10)
    token, claimed = queries.claim("default", 10, 60, "test")
    assert [c.id for c in claimed] == [first.id]  # the second waits behind the first
    queries.complete("default", token, [first.id])
    assert [c.id for c in queries.claim("default", 10, 60, "test")[1]] == [second.id]


def test_a_delayed_send_beside_an_immediate_one_in_one_transaction(connect, drain):
    connect(steered, st.reminder, delay=3600)
    connect(steered, st.ungated)
    with transaction.atomic():
        steered.send(sender=None)
        steered.send(sender=None)
    assert drain() == 2
    assert len(calls("ungated")) == 2 and calls("reminder") == []
    assert len(rows(status=S.PENDING)) == 2


# --- dedupe_key= ----------------------------------------------------------------------


def test_a_burst_of_ten_sends_writes_one_row(connect, drain):
    connect(steered, st.reindex, dedupe_key=st.by_product)
    with transaction.atomic():
        for _ in range(5):
            steered.send(sender=None, product=5)
    for _ in range(5):  # each in its own transaction (autocommit)
        steered.send(sender=None, product=5)
    steered.send(sender=None, product="it's 6")
    steered.send(sender=None, product=None)  # no key: never coalesced
    steered.send(sender=None, product=None)
    assert sorted((e.dedupe_key or "") for e in rows()) == ["", "", "5", "it's 6"]
    drain()
    assert sorted(str(c[2]["product"]) for c in calls("reindex")) == ["5", "None", "None", "it's 6"]


def test_keys_are_per_receiver(connect):
    connect(steered, st.reindex, dedupe_key=st.by_product)
    connect(steered, st.reindex_too, dedupe_key=st.by_product)
    connect(steered, st.ungated)
    with CaptureQueriesContext(connection) as queries_run:
        for _ in range(3):
            steered.send(sender=None, product=5)
    assert len(queries_run) == 3  # one INSERT per send, some of its rows skipped
    assert sorted(e.receiver for e in rows()) == [REINDEX, REINDEX_TOO, UNGATED, UNGATED, UNGATED]


def test_keys_that_differ_only_in_case_or_a_trailing_space_are_other_keys(connect):
    # MySQL's usual collations would call these equal; the outbox compares keys as bytes.
    connect(steered, st.reindex, dedupe_key=st.by_product)
    for product in ["key", "Key", "key ", "key"]:
        steered.send(sender=None, product=product)
    assert sorted(e.dedupe_key for e in rows()) == ["Key", "key", "key "]


def test_one_receiver_twice_in_one_send_coalesces_within_the_statement():
    outbox.connect(steered, st.reindex, dedupe_key=st.by_product, dispatch_uid="one")
    outbox.connect(steered, st.reindex, dedupe_key=st.by_product, dispatch_uid="two")
    try:
        steered.send(sender=None, product=5)
        steered.send(sender=None, product=5)
    finally:
        outbox.disconnect(steered, dispatch_uid="one")
        outbox.disconnect(steered, dispatch_uid="two")
        registry.receivers.pop(REINDEX, None)
    assert [e.receiver for e in rows()] == [REINDEX]


def test_once_a_worker_has_taken_the_event_a_new_send_writes_a_new_row(connect):
    connect(steered, st.reindex, dedupe_key=st.by_product)
    steered.send(sender=None, product=5)
    token, claimed = queries.claim("default", 10, 60, "test")
    assert len(claimed) == 1
    steered.send(sender=None, product=5)
    steered.send(sender=None, product=5)
    assert [e.status for e in rows()] == [S.RUNNING, S.PENDING]


def test_a_retry_and_a_hand_back_beside_a_newer_pending_row_of_the_key(connect):
    """Rows a worker puts back to pending never collide with the fresh row of their key."""
    connect(steered, st.reindex, dedupe_key=st.by_product)
    steered.send(sender=None, product=5)
    token, (first,) = queries.claim("default", 10, 60, "test")
    steered.send(sender=None, product=5)  # a fresh row: the first is running
    assert queries.record_failure("default", token, first.id, "boom", "", 0) == 1  # pending again
    steered.send(sender=None, product=5)  # the fresh row still holds the key
    assert [e.status for e in rows()] == [S.PENDING, S.PENDING]
    token, claimed = queries.claim("default", 10, 60, "test")
    assert len(claimed) == 2
    assert queries.release("default", token, [c.id for c in claimed]) == 2  # both pending again
    assert [e.status for e in rows()] == [S.PENDING, S.PENDING]
    steered.send(sender=None, product=5)  # neither is fresh any more: a new row
    assert [e.status for e in rows()] == [S.PENDING, S.PENDING, S.PENDING]
    steered.send(sender=None, product=5)
    assert len(rows()) == 3


def test_a_replayed_event_beside_a_newer_pending_row_of_the_key(connect):
    connect(steered, st.reindex, dedupe_key=st.by_product)
    steered.send(sender=None, product=5)
    operations.discard(Event.objects.all())  # never claimed: it still looks fresh
    steered.send(sender=None, product=5)
    result = operations.replay(Event.objects.filter(status=S.DISCARDED))
    assert result.changed == 1
    assert [e.status for e in rows()] == [S.PENDING, S.PENDING]
    steered.send(sender=None, product=5)
    assert len(rows()) == 2


def test_dedupe_beside_an_ordering_key_and_a_delay_in_one_statement(connect, drain):
    """The keyed form of the INSERT (advisory locks first, on PostgreSQL) coalesces too."""
    connect(steered, st.sync_account, ordering_key=st.by_product, dedupe_key=st.by_product, delay=0.5)
    connect(steered, st.ungated)
    with transaction.atomic():
        for product in (5, 6, 5, 6, 5):
            steered.send(sender=None, product=product)
    keyed = rows("tests.testapp.steered.sync_account")
    assert [(e.ordering_key, e.dedupe_key) for e in keyed] == [("5", "5"), ("6", "6")]
    assert len(rows(UNGATED)) == 5
    wait_for(lambda: queries.database_now("default") >= keyed[-1].available_at, timeout=10)
    drain()
    assert sorted(c[2]["product"] for c in calls("sync_account")) == [5, 6]


def test_a_rolled_back_send_does_not_hold_the_key(connect):
    connect(steered, st.reindex, dedupe_key=st.by_product)
    with pytest.raises(RuntimeError), transaction.atomic():
        steered.send(sender=None, product=5)
        raise RuntimeError("rolled back")
    steered.send(sender=None, product=5)
    assert len(rows()) == 1


def _send_in_thread(results, name, started, finish, commit=True):
    """A sender on its own connection: sends, reports, waits for ``finish``, then commits
    (or rolls back)."""
    try:
        with transaction.atomic():
            steered.send(sender=None, product=5)
            started.set()
            finish.wait(10)
            if not commit:
                transaction.set_rollback(True)
        results[name] = "ok"
    except Exception as exc:  # reported to the test, which fails on it
        results[name] = repr(exc)
        started.set()
    finally:
        connections.close_all()


def _waiting_on_a_lock() -> bool:
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.parametrize("first_commits", [True, False])
def test_concurrent_senders_of_one_key_never_raise_and_leave_one_row(connect, first_commits):
    connect(steered, st.reindex, dedupe_key=st.by_product)
    results: dict[str, str] = {}
    first_started, second_started, finish_first, finish_second = (threading.Event() for _ in range(4))
    first = threading.Thread(
        target=_send_in_thread, args=(results, "first", first_started, finish_first, first_commits)
    )
    first.start()
    assert first_started.wait(10)
    second = threading.Thread(target=_send_in_thread, args=(results, "second", second_started, finish_second))
    finish_second.set()
    second.start()
    if connection.vendor == "postgresql":
        # The second INSERT waits on the first's uncommitted entry in outbox_event_dedupe.
        wait_for(_waiting_on_a_lock, timeout=10)
        assert not second_started.is_set()
    finish_first.set()
    first.join(20)
    second.join(20)
    assert results == {"first": "ok", "second": "ok"}
    assert len(rows(status=S.PENDING)) == 1


@postgres_only
def test_skipped_and_delayed_rows_leave_the_wake_up_working(connect):
    connect(steered, st.gated, when=st.go)
    connect(steered, st.reindex, dedupe_key=st.by_product, delay=3600)
    steered.send(sender=None, go=False, product=5)  # the one fresh row of key 5
    listener = Listener("default", "outbox")
    try:
        assert listener.arm() is True
        with transaction.atomic():
            steered.send(sender=None, go=False, product=5)  # coalesced: nothing written
            steered.send(sender=None, go=True, product=5)  # the gated row is written
        assert listener.wait(5) is True
        assert len(rows(GATED)) == 1 and len(rows(REINDEX)) == 1
    finally:
        listener.close()


def test_a_turned_away_send_does_not_encode_its_arguments(connect):
    connect(steered, st.gated, when=st.go)
    steered.send(sender=None, go=False, unencodable=object())
    with pytest.raises(SerializationError):
        steered.send(sender=None, go=True, unencodable=object())
    assert rows() == []


# --- refused at registration, and at send before any SQL ------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"delay": -1},
        {"delay": datetime.timedelta(seconds=-1)},
        {"delay": float("nan")},
        {"delay": float("inf")},
        {"delay": True},
        {"delay": "60"},
        {"delay": 11 * 365 * 86400},
        {"delay": datetime.timedelta(days=3700)},
        {"when": True},
        {"dedupe_key": "product"},
        {"delivery": "on_commit", "delay": 5},
        {"delivery": "on_commit", "dedupe_key": st.by_product},
    ],
)
def test_bad_options_are_refused_at_registration(options):
    with pytest.raises(RegistrationError):
        outbox.connect(steered, st.reindex, **options)
    assert not steered.has_listeners()


def test_the_same_receiver_connected_with_other_send_options_is_refused(connect):
    connect(steered, st.reindex, dedupe_key=st.by_product)
    with pytest.raises(RegistrationError, match="dedupe_key"):
        outbox.connect(steered, st.reindex, sender=Person)
    with pytest.raises(RegistrationError, match="delay"):
        outbox.connect(steered, st.reindex, sender=Person, dedupe_key=st.by_product, delay=5)


def test_a_bad_dedupe_key_is_refused_at_send_before_any_sql(connect):
    connect(steered, st.reindex, dedupe_key=st.by_product)
    with transaction.atomic():
        refused = pytest.raises(SerializationError, match="dedupe_key")
        with CaptureQueriesContext(connection) as queries_run, refused:
            steered.send(sender=None, product=1.5)
        assert len(queries_run) == 0
        steered.send(sender=None, product=2)
    assert len(rows()) == 1
