"""The worker's own bookkeeping: committed asynchronously on PostgreSQL (never the sender's
INSERT, nor a receiver's writes), and a batch written done by the statement that claims
the next, fenced on its token like any completion."""

from __future__ import annotations

import django.dispatch
import pytest
from django.db import connection, transaction
from django.test import override_settings

import outbox
from outbox import queries
from outbox.checks import check_settings
from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import postgres_only
from tests.testapp.signals import pinged

pytestmark = pytest.mark.django_db(transaction=True)

probed = django.dispatch.Signal()
chained = django.dispatch.Signal()

#: What a receiver saw of synchronous_commit: (where, value).
SEEN: list[tuple[str, str]] = []


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


def probe_commit(sender, **kwargs):
    SEEN.append(("receiver, autocommit", _synchronous_commit()))
    with transaction.atomic():
        # A send from a receiver is a sender's INSERT like any other: the user's transaction.
        chained.send(sender=None)
        SEEN.append(("receiver, sending in atomic()", _synchronous_commit()))


def chained_receiver(sender, **kwargs):
    pass


@pytest.fixture
def probe():
    import tests.test_bookkeeping as here

    SEEN.clear()
    outbox.connect(probed, here.probe_commit)
    outbox.connect(chained, here.chained_receiver)
    yield
    outbox.disconnect(probed, here.probe_commit)
    outbox.disconnect(chained, here.chained_receiver)


def _statements(run):
    sent: list[str] = []

    def remember(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(remember):
        run()
    return sent


def _claims(sent):
    return [sql for sql in sent if "SET status = 'running'" in sql]


def _lone_completions(sent):
    return [sql for sql in sent if sql.startswith("UPDATE outbox_event SET status = 'done'")]


@postgres_only
def test_the_workers_claims_and_completions_commit_without_waiting_for_the_wal(probe):
    for _ in range(3):
        pinged.send(sender=None)
    sent = _statements(lambda: Worker(once=True, listen=False, batch_size=2).run())
    claims = _claims(sent)
    assert len(claims) >= 3
    assert all(queries.ASYNC_COMMIT_POSTGRESQL in sql for sql in claims)
    assert any("finished AS (UPDATE outbox_event SET status = 'done'" in sql for sql in claims)
    assert all(queries.ASYNC_COMMIT_POSTGRESQL in sql for sql in _lone_completions(sent))
    assert Event.objects.filter(status="done").count() == 3


@postgres_only
def test_the_setting_is_set_local_to_the_statements_own_transaction():
    with connection.cursor() as cursor:
        with transaction.atomic():
            cursor.execute(f"SELECT 1 WHERE true{queries.ASYNC_COMMIT_POSTGRESQL}")
            assert _synchronous_commit() == "off"
        assert _synchronous_commit() == "on"


@postgres_only
def test_receivers_and_the_sends_they_make_commit_synchronously(probe):
    probed.send(sender=None)
    assert Worker(once=True, listen=False).run() == 2
    assert SEEN == [("receiver, autocommit", "on"), ("receiver, sending in atomic()", "on")]
    assert Event.objects.filter(status="done").count() == 2


@postgres_only
def test_a_sender_in_its_transaction_is_untouched_by_the_setting():
    def send():
        with transaction.atomic():
            pinged.send(sender=None)
            assert _synchronous_commit() == "on"

    sent = _statements(send)
    assert not any("set_config('synchronous_commit'" in sql for sql in sent)


@postgres_only
def test_bookkeeping_inside_the_callers_transaction_leaves_its_commit_alone():
    pinged.send(sender=None)
    with transaction.atomic():
        token, rows = queries.claim("default", 10, 60, "w")
        sent = _statements(lambda: queries.complete("default", token, [row.id for row in rows]))
        assert _synchronous_commit() == "on"
    assert sent and not any("set_config('synchronous_commit'" in sql for sql in sent)


@postgres_only
@override_settings(OUTBOX={"WORKER_ASYNC_COMMIT": False})
def test_with_the_setting_off_every_statement_commits_synchronously():
    for _ in range(3):
        pinged.send(sender=None)
    sent = _statements(lambda: Worker(once=True, listen=False, batch_size=2).run())
    assert _claims(sent)
    assert not any("set_config('synchronous_commit'" in sql for sql in sent)
    assert Event.objects.filter(status="done").count() == 3


def test_a_batch_is_written_done_by_the_claim_of_the_next():
    for _ in range(5):
        pinged.send(sender=None)
    sent = _statements(lambda: Worker(once=True, listen=False, batch_size=2).run())
    assert Event.objects.filter(status="done").count() == 5
    if connection.vendor == "postgresql":
        # Three batches: each written done by the next claim, the last by an empty one.
        assert not _lone_completions(sent)
        assert sum("finished AS (UPDATE" in sql for sql in _claims(sent)) == 3


def test_run_batch_writes_its_batch_done_before_it_returns():
    for _ in range(3):
        pinged.send(sender=None)
    assert Worker(listen=False, batch_size=2).run_batch() == 2
    assert Event.objects.filter(status="done").count() == 2


def test_a_completion_carried_by_a_claim_is_fenced_on_its_own_token():
    pinged.send(sender=None)
    token, rows = queries.claim("default", 10, 60, "first")
    # The lease was lost and another worker took the row under another token.
    Event.objects.filter(id=rows[0].id).update(lease_token="other")
    queries.claim("default", 10, 60, "first", done=(token, [rows[0].id]))
    event = Event.objects.get(id=rows[0].id)
    assert (event.status, event.lease_token) == ("running", "other")
    queries.claim("default", 10, 60, "other", done=("other", [rows[0].id]))
    assert Event.objects.get(id=rows[0].id).status == "done"


def test_the_setting_takes_only_true_or_false():
    with override_settings(OUTBOX={"WORKER_ASYNC_COMMIT": "off"}):
        errors = check_settings(None)
    assert [error.id for error in errors] == ["outbox.E004"]
    assert "WORKER_ASYNC_COMMIT" in errors[0].msg
