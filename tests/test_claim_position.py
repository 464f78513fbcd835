"""A busy worker claims from where its previous batch stood in the due index (PostgreSQL),
so that it steps over the dead entries of finished events once, not at every claim; rows
that lie before that position are still claimed, by a claim from the index's start."""

from __future__ import annotations

import datetime
import time

import pytest
from django.db import connection

from outbox import queries
from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import postgres_only
from tests.testapp.signals import pinged

pytestmark = pytest.mark.django_db(transaction=True)


@postgres_only
def test_a_claim_from_a_position_takes_the_rows_from_there_on():
    for n in range(6):
        pinged.send(sender=None, n=n)
    events = list(Event.objects.order_by("available_at", "id"))
    fourth = (micros(events[3].available_at), events[3].id)
    _, rows, position = queries.claim_after("default", 10, 60, "w", after=fourth)
    assert [row.id for row in rows] == [event.id for event in events[3:]]
    assert position == fourth
    _, rows, position = queries.claim_after("default", 10, 60, "w")
    assert [row.id for row in rows] == [event.id for event in events[:3]]
    assert position == (micros(events[0].available_at), events[0].id)


def micros(when: datetime.datetime) -> int:
    """A position's time: microseconds since the epoch (queries.Position), exactly."""
    return (when - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)) // datetime.timedelta(
        microseconds=1
    )


def test_a_worker_claims_rows_that_lie_before_its_position():
    for n in range(4):
        pinged.send(sender=None, n=n)
    worker = Worker(once=True, listen=False, batch_size=2)
    assert worker._run_batch() == 2
    # An event that turns up before the position the worker resumes from: a sender's long
    # transaction commits a row stamped when its INSERT ran.
    pinged.send(sender=None, n="late")
    Event.objects.filter(payload__kwargs__n="late").update(
        available_at=Event.objects.order_by("available_at").first().available_at - datetime.timedelta(hours=1)
    )
    worker.run()
    assert Event.objects.exclude(status="done").count() == 0
    assert Event.objects.count() == 5


@postgres_only
def test_the_claim_from_a_position_starts_its_index_range_there():
    sql = queries._claim_postgresql(False, False, "", after=True)
    params = {
        "token": "t",
        "lease": 60.0,
        "limit": 10,
        "worker": "w",
        "after_at": int(time.time() * 1_000_000),  # microseconds since the epoch: queries.Position
        "after_id": 1,
    }
    with connection.cursor() as cursor:
        # Explained as the worker sends it: after its planner settings, in one message
        # (queries.PIN_PLAN_POSTGRESQL; unpinned, an empty table's plan is the planner's pick).
        cursor.execute(queries._PIN_PLAN_POSTGRESQL + "EXPLAIN " + sql, params)
        cursor.nextset()
        plan = "\n".join(row[0] for row in cursor.fetchall())
    [walk] = [line for line in plan.splitlines() if "Index Scan using outbox_event_due" in line]
    cond = plan.splitlines()[plan.splitlines().index(walk) + 1]
    assert "Index Cond" in cond and "ROW(available_at, id) >=" in cond


@postgres_only
@pytest.mark.parametrize(
    "due",
    [
        datetime.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=datetime.timezone.utc),
        datetime.datetime(2026, 12, 7, 18, 0, 0, 1, tzinfo=datetime.timezone.utc),
    ],
    ids=["before the epoch", "a microsecond past the second"],
)
def test_the_claim_carries_times_to_the_microsecond(due):
    """The claim returns created_at and due_at as microseconds since the epoch (integers
    load in C, timestamps through Django's Python loader): both come back exact, and a
    claim from the position takes the row it names again."""
    pinged.send(sender=None, n=1)
    created = datetime.datetime(1969, 7, 20, 20, 17, 40, 123_457, tzinfo=datetime.timezone.utc)
    Event.objects.update(available_at=due, created_at=created)
    event = Event.objects.get()
    token, [row], position = queries.claim_after("default", 10, 60, "w")
    assert row.created_at == created and position == (micros(due), event.id)
    queries.release("default", token, [event.id])
    Event.objects.update(available_at=due)
    _, rows, _ = queries.claim_after("default", 10, 60, "w", after=position)
    assert [r.id for r in rows] == [event.id]
