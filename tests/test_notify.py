"""PostgreSQL: one NOTIFY per transaction, folded into the first INSERT, never per row."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from outbox.listener import Listener
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
    assert notifying(ctx.captured_queries)[0].startswith("WITH e AS (INSERT")


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


def test_the_listener_hears_a_committed_send_and_not_a_rolled_back_one():
    listener = Listener("default", "outbox")
    try:
        with pytest.raises(ValueError), transaction.atomic():
            pinged.send(sender="rolled back")
            raise ValueError
        assert listener.wait(0.3) is False
        with transaction.atomic():
            pinged.send(sender="committed")
            assert listener.wait(0.1) is False  # not before the commit
        assert listener.wait(5) is True
    finally:
        listener.close()
