"""PostgreSQL: at most one NOTIFY per transaction, folded into the first INSERT, never per
row, and none unless a worker waits for one; a worker never sleeps through a sender that
decided not to notify."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from outbox.wakeup import Listener
from tests.conftest import postgres_only
from tests.testapp.signals import pinged

pytestmark = [pytest.mark.django_db(transaction=True), postgres_only]


def notifying(queries):
    return [q["sql"] for q in queries if "pg_notify" in q["sql"]]


def test_a_transaction_sends_one_notify_however_many_rows_it_writes():
    with CaptureQueriesContext(connection) as ctx, transaction.atomic():
        for i in range(5):
            pinged.send(sender=i)
    inserts = [q for q in ctx.captured_queries if q["sql"].lstrip().upper().startswith(("INSERT", "WITH"))]
    assert len(inserts) == 5
    assert len(notifying(ctx.captured_queries)) == 1
    assert notifying(ctx.captured_queries)[0].startswith("INSERT INTO outbox_event")


def test_each_autocommit_send_notifies():
    with CaptureQueriesContext(connection) as ctx:
        pinged.send(sender=1)
        pinged.send(sender=2)
    assert len(notifying(ctx.captured_queries)) == 2


def test_a_rolled_back_savepoint_takes_its_notify_with_it_so_the_next_send_notifies_again():
    with CaptureQueriesContext(connection) as ctx, transaction.atomic():
        try:
            with transaction.atomic():
                pinged.send(sender="in savepoint")
                raise ValueError
        except ValueError:
            pass
        pinged.send(sender="after")
    assert len(notifying(ctx.captured_queries)) == 2


@pytest.fixture
def listener():
    listener = Listener("default", "outbox")
    yield listener
    listener.close()


def test_the_listener_hears_a_committed_send_and_not_a_rolled_back_one(listener):
    assert listener.arm() is True
    with pytest.raises(ValueError), transaction.atomic():
        pinged.send(sender="rolled back")
        raise ValueError
    assert listener.wait(0.3) is False
    with transaction.atomic():
        pinged.send(sender="committed")
        assert listener.wait(0.1) is False  # not before the commit
    assert listener.wait(5) is True


def test_no_notify_reaches_a_listener_that_is_not_armed(listener):
    with transaction.atomic():
        pinged.send(sender="nobody waits")
    assert listener.wait(0.5) is False


def test_a_disarmed_listener_is_no_longer_notified(listener):
    assert listener.arm() is True
    listener.disarm()
    pinged.send(sender="busy worker")
    assert listener.wait(0.5) is False
    assert listener.arm() is True
    pinged.send(sender="idle worker")
    assert listener.wait(5) is True


def test_a_worker_does_not_settle_while_a_sender_that_did_not_notify_is_in_flight(listener):
    with transaction.atomic():
        pinged.send(sender="before the worker armed")  # nobody waits: no NOTIFY
        assert listener.arm() is False  # this transaction may commit after the last claim
        assert listener.armed  # but later senders notify it
    assert listener.arm() is True
    assert listener.wait(0.3) is False  # the commit sent nothing: the worker must look itself


def test_a_sender_that_starts_after_the_worker_armed_notifies_it(listener):
    assert listener.arm() is True
    with transaction.atomic():
        pinged.send(sender="after the worker armed")
        assert listener.arm() is False  # in flight, but it will notify
    assert listener.wait(5) is True


def test_several_listeners_share_the_waiting_lock(listener):
    other = Listener("default", "outbox")
    try:
        assert listener.arm() is True
        assert other.arm() is True
        pinged.send(sender="both wait")
        assert listener.wait(5) is True
        assert other.wait(5) is True
    finally:
        other.close()
