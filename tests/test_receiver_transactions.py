"""A receiver that returns with a transaction open fails alone; the worker commits the rest.

The worker runs receivers in autocommit on its own connection and records every outcome
there. A transaction a receiver leaves open would take in every later write of the worker
and of the receivers after it, and nothing would ever commit them.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from outbox.models import Event
from tests.conftest import wait_for
from tests.testapp.faults import LEAVE_TRANSACTION, leave_transaction
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)

#: The ways the worker detects. On MySQL and MariaDB not a raw BEGIN: mysqlclient does not
#: expose the server's in-transaction flag, and the look must cost no query (see the last
#: test); Django's own ways (atomic(), set_autocommit) are seen there as everywhere.
DETECTED = [how for how in LEAVE_TRANSACTION if connection.vendor != "mysql" or "raw BEGIN" not in how]

LEFT_OPEN = "TransactionLeftOpen: the receiver left a transaction open on database 'default'"


def _committed(query):
    """Run ``query`` on a connection of its own (another thread's): it sees only what was
    committed, not what is merely visible inside the worker's transaction."""

    def run():
        try:
            return query()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def _events():
    return {
        (event.signal.rsplit(".", 1)[-1], event.payload["kwargs"]["key"]): event
        for event in Event.objects.order_by("id")
    }


def _calls():
    return sorted(Call.objects.values_list("receiver", "key"))


@pytest.mark.parametrize("how", DETECTED)
def test_a_receiver_that_leaves_a_transaction_open_fails_alone_and_the_rest_commit(how, drain):
    with transaction.atomic():
        leave_transaction.send(sender=None, how=how, key="bad")
        for i in range(3):
            work.send(sender=None, key=f"after-{i}")
    assert drain(batch_size=10) == 4

    events = _committed(_events)
    bad = events["leave_transaction", "bad"]
    assert bad.status == "failed"
    assert bad.last_error.startswith(LEFT_OPEN), bad.last_error
    assert "its uncommitted writes were rolled back" in bad.last_error
    assert [events["work", f"after-{i}"].status for i in range(3)] == ["done"] * 3
    # The receivers after it committed their writes; the bad one's were rolled back.
    assert _committed(_calls) == [("record", f"after-{i}") for i in range(3)]
    # And the worker's connection is back in autocommit, outside any transaction.
    assert connection.get_autocommit()
    assert not connection.in_atomic_block


def test_a_receiver_that_raises_with_a_transaction_left_open_records_both(drain):
    with transaction.atomic():
        leave_transaction.send(sender=None, how="atomic() never exited", key="bad", then_raise=True)
        work.send(sender=None, key="after")
    drain(batch_size=10)
    bad = _committed(_events)["leave_transaction", "bad"]
    assert bad.status == "failed"
    assert bad.last_error.startswith(LEFT_OPEN), bad.last_error
    assert "RuntimeError: the mail server is down" in bad.last_error
    # The traceback shows where the receiver raised, as the cause.
    assert 'raise RuntimeError("the mail server is down")' in bad.last_traceback
    assert _committed(_calls) == [("record", "after")]


def test_a_worker_process_survives_every_way_of_leaving_a_transaction_open(worker_process):
    with transaction.atomic():
        for how in DETECTED:
            leave_transaction.send(sender=None, how=how, key=how)
            work.send(sender=None, key=f"after {how}")
    worker = worker_process("--poll-interval", "0.1", "--batch-size", "20")
    # The test process reads on its own connection: only what the worker committed.
    wait_for(lambda: Event.objects.filter(status__in=["done", "failed"]).count() == 2 * len(DETECTED))
    assert worker.process.poll() is None, f"the worker is still running:\n{worker.output}"
    for event in Event.objects.filter(signal="tests.testapp.faults.leave_transaction"):
        assert event.status == "failed"
        assert event.last_error.startswith(LEFT_OPEN), event.last_error
    assert Event.objects.filter(signal="tests.testapp.signals.work", status="done").count() == len(DETECTED)
    assert _calls() == sorted(("record", f"after {how}") for how in DETECTED)

    # The worker holds no lock and no transaction: this process (the web process, on
    # SQLite the one writer) writes at once, and the worker runs what it sent.
    with transaction.atomic():
        work.send(sender=None, key="sent afterwards")
    wait_for(lambda: Call.objects.filter(key="sent afterwards").exists())
    assert Event.objects.filter(status="done").count() == len(DETECTED) + 1
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_the_look_for_a_transaction_left_open_costs_no_query(drain):
    """The worker reads the driver's state, which the server's replies keep current."""

    def queries_to_drain(n):
        for i in range(n):
            work.send(sender=None, key=f"{n}-{i}")
        with CaptureQueriesContext(connection) as captured:
            drain(batch_size=10)
        return len(captured)

    one, five = queries_to_drain(1), queries_to_drain(5)
    # Each more event costs its receiver's INSERT, and nothing else.
    assert five - one == 4


@pytest.mark.django_db(transaction=False)
def test_a_transaction_left_open_on_a_database_first_opened_by_the_receiver_is_found(monkeypatch):
    """The worker looks up its connections once per batch (transactions.Before); one that a
    receiver opens for another database is still looked at after it, until every alias has
    its connection object in the thread."""
    from django.db.utils import ConnectionHandler

    from outbox import transactions

    handler = ConnectionHandler(
        {
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
            "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        }
    )
    monkeypatch.setattr(transactions, "connections", handler)
    try:
        handler["default"].ensure_connection()
        before = transactions.open_transactions()
        assert (before.aliases, before.every_alias) == (frozenset(), False)
        handler["other"].set_autocommit(False)  # the receiver: a connection, left in a transaction
        assert transactions.roll_back_left_open(before) == ["other"]
        assert handler["other"].get_autocommit(), "rolled back, reconnected in autocommit"

        before = transactions.open_transactions()
        assert before.every_alias and list(before.now()) == [handler["default"], handler["other"]]
        handler["default"].set_autocommit(False)
        assert transactions.roll_back_left_open(before) == ["default"]
        assert transactions.roll_back_left_open(before) == []
    finally:
        handler.close_all()
