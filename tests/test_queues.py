"""Queues: a receiver's events are written to its queue; a worker drains the queues it is given."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction

import outbox
from outbox import queries
from outbox.exceptions import RegistrationError
from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import wait_for
from tests.testapp.models import Call
from tests.testapp.signals import queued, work

pytestmark = pytest.mark.django_db(transaction=True)

FAST, SLOW = "tests.testapp.routed.fast_job", "tests.testapp.routed.slow_job"


def send(n, prefix="k", **kwargs):
    """n sends of ``queued``: each writes one event to "fast" and one to "slow"."""
    with transaction.atomic():
        for i in range(n):
            queued.send(sender=None, key=f"{prefix}{i}", **kwargs)


def ran(receiver):
    return Call.objects.filter(receiver=receiver)


def test_each_event_is_written_to_its_receivers_queue():
    send(1)
    work.send(sender=None, key="plain")
    assert sorted(Event.objects.values_list("receiver", "queue")) == [
        ("tests.testapp.receivers.record", "default"),
        (FAST, "fast"),
        (SLOW, "slow"),
    ]


def test_a_claim_for_named_queues_takes_only_theirs_oldest_first():
    send(3)
    work.send(sender=None, key="plain")
    for queues, expected in [
        (["fast"], {"fast"}),
        (["slow", "default"], {"slow", "default"}),
        (None, {"fast", "slow", "default"}),
        (["nowhere"], set()),
    ]:
        token, rows = queries.claim("default", 100, 60, "test", queues=queues)
        ids = [row.id for row in rows]
        assert set(Event.objects.filter(id__in=ids).values_list("queue", flat=True)) == expected
        assert ids == sorted(ids)
        queries.release("default", token, ids)
    token, rows = queries.claim("default", 2, 60, "test", queues=["slow", "fast"])
    assert [row.id for row in rows] == list(Event.objects.order_by("id").values_list("id", flat=True)[:2])


def test_a_fast_worker_runs_its_events_while_every_slow_one_waits_and_a_slow_worker_takes_no_fast_one(
    worker_process,
):
    send(20)
    fast = worker_process("--queue", "fast")
    wait_for(lambda: ran("fast").count() == 20)
    assert not ran("slow").exists()
    assert set(Event.objects.filter(queue="slow").values_list("status", "attempts")) == {("pending", 0)}
    fast.signal()
    assert fast.wait() == 0
    send(10, prefix="later", sleep=0.01)  # new fast events: only a fast worker may take them
    slow = worker_process("--queue", "slow", "--queue", "nowhere")
    wait_for(lambda: ran("slow").count() == 30)
    assert ran("fast").count() == 20
    assert set(Event.objects.filter(queue="fast", status="pending").values_list("attempts", flat=True)) == {0}
    assert set(ran("slow").values_list("worker_pid", flat=True)) == {slow.process.pid}
    assert set(ran("fast").values_list("worker_pid", flat=True)) == {fast.process.pid}


def test_the_relay_hands_over_only_its_queues():
    from django_q.models import OrmQ

    from outbox.dispatch import django_q2

    send(5)
    Worker(once=True, listen=False, dispatcher=django_q2.Dispatcher(), queues=["fast"]).run()
    relayed = [i for task in OrmQ.objects.all() for i in task.task["args"][2]]
    assert sorted(relayed) == sorted(Event.objects.filter(queue="fast").values_list("id", flat=True))
    assert set(Event.objects.filter(queue="slow").values_list("status", flat=True)) == {"pending"}


@pytest.mark.parametrize("command", ["outbox_replay", "outbox_discard"])
def test_replay_and_discard_take_queue(command):
    send(3)
    Event.objects.update(status="failed")
    out = io.StringIO()
    call_command(command, "--queue", "slow", stdout=out)
    assert "3 changed" in out.getvalue()
    changed = "pending" if command == "outbox_replay" else "discarded"
    statuses = dict(Event.objects.values_list("queue", "status").distinct())
    assert statuses == {"slow": changed, "fast": "failed"}


@pytest.mark.parametrize("name", ["", "two words", "-dash", ".dot", "x" * 65, "é", "a/b"])
def test_bad_queue_names_are_refused_everywhere(name):
    def job(sender, **kwargs):
        pass

    with pytest.raises(RegistrationError, match="queue must be"):
        outbox.connect(queued, job, queue=name)
    with pytest.raises(RegistrationError, match="queue must be"):
        Worker(queues=[name])
    for command in ("run_outbox", "outbox_replay", "outbox_discard"):
        with pytest.raises(CommandError, match="is not a queue name"):
            call_command(command, f"--queue={name}")


def test_good_queue_names_are_accepted():
    for name in ("emails", "web-hooks", "low.priority", "Q_2", "x" * 64):
        assert Worker(queues=[name]).queues == [name]


def test_status_reports_each_queue_by_status():
    send(3)
    work.send(sender=None, key="plain")
    Event.objects.filter(queue="slow", id=Event.objects.filter(queue="slow").first().id).update(
        status="failed"
    )
    out = io.StringIO()
    call_command("outbox_status", "--json", stdout=out)
    import json

    assert json.loads(out.getvalue())["by_queue"] == {
        "default": {"pending": 1},
        "fast": {"pending": 3},
        "slow": {"pending": 2, "failed": 1},
    }
    text = io.StringIO()
    call_command("outbox_status", stdout=text)
    assert [line.split() for line in text.getvalue().splitlines() if line.startswith("  slow ")] == [
        ["slow", "2", "0", "1", "0"]
    ]
