"""outbox.testing under pytest-django: drain() and capture() in the test's transaction and
in transaction=True tests, and the plugin's fixtures."""

from __future__ import annotations

import datetime
import logging
import subprocess
import sys
import traceback

import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction

from outbox import testing
from outbox.models import Event
from outbox.registry import registry
from outbox.testing.draining import WORKER
from tests.conftest import ROOT, postgres_only
from tests.testapp.models import Call, Person
from tests.testapp.testing_receivers import (
    announced,
    broke_db,
    explode,
    exploded,
    greeted,
    looped,
    relayed,
    sorted_out,
    welcome,
)

#: Each test twice: inside the test's transaction (what django.test.TestCase does), and
#: committing for real (TransactionTestCase, django_db(transaction=True)).
WELCOME = "tests.testapp.testing_receivers.welcome"

both = pytest.mark.parametrize(
    "transactional",
    [
        pytest.param(False, marks=pytest.mark.django_db, id="in_test_transaction"),
        pytest.param(True, marks=pytest.mark.django_db(transaction=True), id="transaction_true"),
    ],
)


def keys(receiver):
    return sorted(Call.objects.filter(receiver=receiver).values_list("key", flat=True))


@both
def test_drain_runs_due_events_and_says_what_ran(transactional):
    ada = Person.objects.create(name="ada")
    greeted.send(sender=Person, person=ada)
    assert keys("welcome") == []

    ran = testing.drain()

    assert keys("welcome") == ["ada"]
    assert [(r.receiver, r.attempt, r.ok) for r in ran] == [
        ("tests.testapp.testing_receivers.welcome", 1, True)
    ]
    event = Event.objects.get(id=ran[0].id)
    assert (event.status, event.worker) == ("done", WORKER)
    assert testing.drain() == []


@both
def test_events_sent_by_receivers_run_in_the_same_drain(transactional):
    greeted_before = Event.objects.count()
    relayed.send(sender=Person, person=Person.objects.create(name="bo"))
    ran = testing.drain()
    assert [r.receiver.rsplit(".", 1)[1] for r in ran] == ["relay_on", "welcome"]
    assert keys("welcome") == ["bo+relayed"]
    assert Event.objects.count() == greeted_before + 2


@both
def test_a_receivers_exception_fails_the_test_with_its_own_traceback(transactional):
    exploded.send(sender=None)
    with pytest.raises(ValueError, match="the receiver's own error") as raised:
        testing.drain()
    frames = [(frame.name, frame.filename) for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert frames[-2:] == [
        ("explode", explode.__code__.co_filename),
        ("_fail_deep_inside", explode.__code__.co_filename),
    ]
    # Recorded as the worker records it, and the test's connection is still usable.
    event = Event.objects.get()
    assert (event.status, event.attempts, event.lease_token) == ("pending", 1, None)
    assert "ValueError: the receiver's own error" in event.last_error
    assert "_fail_deep_inside" in event.last_traceback


def test_the_rest_of_the_batch_is_handed_back_when_a_receiver_raises(transactional_db):
    exploded.send(sender=None)
    greeted.send(sender=Person, person=Person.objects.create(name="cy"))
    with pytest.raises(ValueError):
        testing.drain()
    left = Event.objects.get(receiver__endswith=".welcome")
    assert (left.status, left.attempts, left.lease_token) == ("pending", 0, None)
    assert "welcome" in [r.receiver.rsplit(".", 1)[1] for r in testing.drain(raise_errors=False)]


@both
def test_raise_errors_false_records_failures_as_the_worker_would(transactional):
    exploded.send(sender=None)
    greeted.send(sender=Person, person=Person.objects.create(name="di"))

    ran = testing.drain(raise_errors=False)

    assert [(r.receiver.rsplit(".", 1)[1], r.ok) for r in ran] == [("explode", False), ("welcome", True)]
    assert isinstance(ran[0].error, ValueError)
    failed = Event.objects.get(id=ran[0].id)
    assert (failed.status, failed.attempts) == ("pending", 1)
    assert failed.available_at > failed.created_at  # a retry after backoff, not run again now
    assert keys("welcome") == ["di"]
    # The retry, brought forward, is the last attempt (max_attempts=2): failed for good.
    assert [r.attempt for r in testing.drain(raise_errors=False, delayed=True)] == [2]
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == ("failed", 2)


@both
def test_a_database_error_in_a_receiver_leaves_the_test_transaction_usable(transactional):
    broke_db.send(sender=None, key="k1")
    greeted.send(sender=Person, person=Person.objects.create(name="ed"))
    ran = testing.drain(raise_errors=False)
    assert [r.ok for r in ran] == [False, True]
    assert "IntegrityError" in Event.objects.get(id=ran[0].id).last_error
    assert keys("welcome") == ["ed"]
    assert Event.objects.get(id=ran[0].id).status == "failed"


@both
def test_events_not_due_yet_run_only_when_asked(transactional):
    greeted.send(sender=Person, person=Person.objects.create(name="flo"))
    later = datetime.timedelta(minutes=10)
    Event.objects.update(available_at=datetime.datetime.now(datetime.timezone.utc) + later)
    assert testing.drain() == []
    assert [r.receiver.rsplit(".", 1)[1] for r in testing.drain(delayed=True)] == ["welcome"]
    assert keys("welcome") == ["flo"]


@both
def test_queues_and_ordering_keys(transactional):
    for step in ("1", "2", "3"):
        sorted_out.send(sender=None, account="acme", step=step)
    greeted.send(sender=Person, person=Person.objects.create(name="gil"))

    assert [r.receiver.rsplit(".", 1)[1] for r in testing.drain(queues=["mail"])] == ["mail_step"] * 3
    assert list(Call.objects.filter(receiver="mail_step").order_by("id").values_list("key", flat=True)) == [
        "acme:1",
        "acme:2",
        "acme:3",
    ]
    assert keys("welcome") == []
    assert len(testing.drain()) == 1


def test_receivers_that_keep_sending_hit_the_limit(db):
    looped.send(sender=None)
    with pytest.raises(testing.DrainLimitExceeded, match="more than its limit of 5"):
        testing.drain(limit=5)


@both
def test_capture_lists_what_was_sent_decoded_without_running_it(transactional):
    greeted.send(sender=Person, person=Person.objects.create(name="before"))
    hal = Person.objects.create(name="hal")

    with testing.capture() as sent:
        greeted.send(sender=Person, person=hal, note="!")
        sorted_out.send(sender=None, account="acme", step="1")
        assert len(sent) == 2  # current inside the block

    assert [event.receiver for event in sent] == [
        "tests.testapp.testing_receivers.welcome",
        "tests.testapp.testing_receivers.mail_step",
    ]
    first, second = sent
    assert first.signal == "tests.testapp.testing_receivers.greeted"
    assert first.sender is Person
    assert first.kwargs == {"person": hal, "note": "!"}
    assert type(first.kwargs["person"]) is Person and first.kwargs["person"].name == "hal"
    assert (first.queue, first.ordering_key, first.status) == ("default", None, "pending")
    assert first.func is welcome
    assert first.delay == datetime.timedelta(0)
    assert (second.queue, second.ordering_key) == ("mail", "acme")
    assert sent.to(welcome) == [first]
    assert sent.to("tests.testapp.testing_receivers.mail_step") == [second]
    assert keys("welcome") == []  # nothing ran


def test_on_commit_receivers_write_no_event_and_run_with_the_callbacks(
    db, django_capture_on_commit_callbacks
):
    with testing.capture() as sent, django_capture_on_commit_callbacks(execute=True):
        announced.send(sender=None, key="now")
        greeted.send(sender=Person, person=Person.objects.create(name="max"))
    assert sent.receivers == [WELCOME]
    assert keys("announce_now") == ["now"]
    assert testing.drain()[0].receiver == WELCOME


def test_capture_of_nothing(db):
    with testing.capture() as sent:
        Person.objects.create(name="quiet")
    assert list(sent) == [] and len(sent) == 0


def test_the_plugin_fixtures(outbox_sent, outbox_drain):
    greeted.send(sender=Person, person=Person.objects.create(name="ivy"))
    assert outbox_sent.receivers == ["tests.testapp.testing_receivers.welcome"]
    assert outbox_sent[0].kwargs["person"].name == "ivy"
    assert [r.ok for r in outbox_drain()] == [True]
    assert outbox_sent[0].status == "done"


@pytest.mark.django_db(transaction=True)
def test_the_capture_fixture_in_a_transaction_true_test(outbox_sent, outbox_drain):
    greeted.send(sender=Person, person=Person.objects.create(name="jo"))
    assert outbox_sent.receivers == ["tests.testapp.testing_receivers.welcome"]
    outbox_drain()
    assert keys("welcome") == ["jo"]


@both
def test_nothing_is_left_behind(transactional):
    receivers, signals = dict(registry.receivers), dict(registry.signals)
    outbox_setting = getattr(django_settings, "OUTBOX", None)
    logger = logging.getLogger("outbox")
    level, handlers, propagate = logger.level, list(logger.handlers), logger.propagate
    atomic_before = connection.in_atomic_block

    with testing.capture():
        greeted.send(sender=Person, person=Person.objects.create(name="kim"))
        exploded.send(sender=None)
    testing.drain(raise_errors=False)
    with pytest.raises(ValueError):
        testing.drain(delayed=True)

    assert (dict(registry.receivers), dict(registry.signals)) == (receivers, signals)
    assert getattr(django_settings, "OUTBOX", None) == outbox_setting
    assert (logger.level, logger.handlers, logger.propagate) == (level, handlers, propagate)
    assert connection.in_atomic_block == atomic_before
    assert not Event.objects.filter(status="running").exists()
    if transactional:  # autocommit: no transaction open on the test's connection
        assert connection.get_autocommit() and not transaction.get_connection().in_atomic_block


@postgres_only
def test_drain_in_the_test_transaction_sees_rows_no_other_connection_sees(db):
    from django.db import connections

    greeted.send(sender=Person, person=Person.objects.create(name="lu"))
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM outbox_event")
            assert cursor.fetchone()[0] == 0
    finally:
        other.close()
    assert len(testing.drain()) == 1


@pytest.mark.processes
def test_django_s_own_runner_runs_the_testcase_tests(tmp_path):
    """The TestCase classes of tests/test_testing_django.py, through ``manage.py test``
    (Django's DiscoverRunner) in a process of its own, on a SQLite database of its own."""
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'runner.db'}",
        "OUTBOX_SQLITE_TEST_NAME": str(tmp_path / "runner-test.db"),
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "test",
            "tests.test_testing_django",
            "--settings=tests.settings",
            "--noinput",
            "-v",
            "2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Ran 4 tests" in done.stderr
    assert "test_capture_and_on_commit_receivers" in done.stderr


@pytest.mark.processes
def test_the_example_site_s_own_tests_pass():
    """example/social/tests.py uses outbox.testing as a project would (SQLite in memory)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "manage.py", "test", "social", "--noinput"],
        cwd=ROOT / "example",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Ran 4 tests" in done.stderr
