"""Who owns which rows of a claimed batch: an event that kills its worker is charged alone,
and a receiver that hangs keeps only its own row while other workers run the rest."""

from __future__ import annotations

import datetime
import time
from collections import Counter

import pytest
from django.db import transaction
from django.utils import timezone

from outbox import queries
from outbox.claims import Claim
from outbox.models import Event
from tests.conftest import wait_for
from tests.testapp.faults import crash
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)


def _keys(receiver: str) -> Counter:
    return Counter(Call.objects.filter(receiver=receiver).values_list("key", flat=True))


def _event(key: str) -> Event:
    return Event.objects.get(payload__kwargs__key=key)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_an_event_that_kills_its_worker_fails_alone_and_its_batch_mates_end_done(worker_process, concurrency):
    # At concurrency 4 the orphans of the dead batch must still run one at a time, nothing
    # beside them: an orphan in hand when another kills the worker would be charged too.
    keys = [f"row-{i}" for i in range(10)]
    with transaction.atomic():
        for i, key in enumerate(keys):
            crash.send(sender=None, key=key, die=i == 3)
    options = ("--batch-size", "10", "--lease-seconds", "1", "--poll-interval", "0.1")
    options += ("--concurrency", str(concurrency))
    worker = worker_process(*options)
    deaths = 0
    deadline = time.monotonic() + 120
    # A supervisor: every time the worker dies, start another.
    while Event.objects.filter(status__in=["pending", "running"]).exists():
        assert time.monotonic() < deadline, f"not drained after {deaths} deaths:\n{worker.output}"
        if worker.process.poll() is not None:
            assert worker.process.returncode == 3, worker.output
            deaths += 1
            worker = worker_process(*options)
        time.sleep(0.05)

    poison = _event("row-3")
    assert poison.status == "failed", poison.last_error
    assert "gave up after 2 attempts" in poison.last_error and "lease expired" in poison.last_error
    innocents = [_event(key) for key in keys if key != "row-3"]
    assert [(e.status, e.attempts) for e in innocents] == [("done", 1)] * 9
    # Its death in the batch is pinned on no row; then it runs alone and kills two workers.
    assert deaths == 3
    called = _keys("record_or_crash")
    # One at a time, the rows after the poison never ran before its death: once each. The
    # rows before it (at concurrency 4, any beside it) ran in the dead batch before they
    # could be recorded: they may run once more.
    after = keys[4:] if concurrency == 1 else []
    assert all(called[key] == 1 for key in after), called
    assert all(1 <= called[key] <= 2 for key in keys if key != "row-3"), called


def test_at_concurrency_an_orphan_waits_for_a_slow_receiver_in_hand_only_so_long(worker_process):
    # An orphan waits for the receivers in hand before it runs alone, but a slow one (or
    # one hung for good) must not hold it hostage: it runs after HAND_BACK_AFTER (1 s).
    with transaction.atomic():
        work.send(sender=None, key="orphan")
    _, rows = queries.claim("default", 10, 2, "dead")  # its worker dies: due again in 2 s
    assert [r.attempts for r in rows] == [1]
    with transaction.atomic():
        work.send(sender=None, key="slow", sleep=10, mark_start=True)
    worker_process("--concurrency", "4", "--lease-seconds", "3", "--poll-interval", "0.1")
    wait_for(lambda: Call.objects.filter(receiver="started", key="slow").exists(), timeout=30)
    wait_for(lambda: _event("orphan").status == "done", timeout=30)
    assert not _keys("record")["slow"], "the orphan ran before the slow receiver returned"
    assert _event("orphan").attempts == 1, "its batch attempt given back, its own counted"
    wait_for(lambda: _event("slow").status == "done", timeout=30)
    assert _keys("record") == Counter(["orphan", "slow"])


def test_at_concurrency_an_orphan_that_runs_long_stops_the_other_slots_only_so_long(worker_process):
    # Nothing starts beside an orphan, until it has run HAND_BACK_AFTER (1 s): then the rest
    # of its batch is handed back, and the other slots run events again.
    with transaction.atomic():
        work.send(sender=None, key="orphan", sleep=10, mark_start=True)
    queries.claim("default", 10, 1, "dead")  # its worker dies: due again in 1 s
    worker_process("--concurrency", "4", "--poll-interval", "0.1")
    wait_for(lambda: Call.objects.filter(receiver="started", key="orphan").exists(), timeout=30)
    with transaction.atomic():
        for i in range(3):
            work.send(sender=None, key=f"quick-{i}")
    quick = Event.objects.filter(payload__kwargs__key__startswith="quick-")
    wait_for(lambda: quick.filter(status="done").count() == 3, timeout=30)
    assert not _keys("record")["orphan"], "the others ran while the orphan still ran"
    wait_for(lambda: _event("orphan").status == "done", timeout=30)
    assert _event("orphan").attempts == 1


def test_a_hung_receiver_keeps_only_its_own_row_and_another_worker_runs_the_rest(worker_process):
    rest = [f"rest-{i}" for i in range(5)]
    with transaction.atomic():
        work.send(sender=None, key="before")
        work.send(sender=None, key="hangs", sleep=15)
        for key in rest:
            work.send(sender=None, key=key)
    options = ("--batch-size", "10", "--lease-seconds", "60", "--poll-interval", "0.1")
    first = worker_process(*options)
    wait_for(lambda: Call.objects.filter(key="before").exists(), timeout=60)
    second = worker_process(*options)
    wait_for(lambda: Call.objects.filter(key__in=rest).count() == len(rest), timeout=60)
    assert not Call.objects.filter(key="hangs").exists(), "the first worker still hangs"
    assert set(Call.objects.filter(key__in=rest).values_list("worker_pid", flat=True)) == {second.process.pid}
    assert _event("before").status == "done", "run before the hang, recorded without waiting for it"
    hung = _event("hangs")
    assert (hung.status, hung.worker.endswith(f":{first.process.pid}")) == ("running", True)

    wait_for(lambda: not Event.objects.exclude(status="done").exists(), timeout=60)
    assert _keys("record") == Counter(["before", "hangs", *rest]), "nothing ran twice"
    assert set(Event.objects.values_list("attempts", flat=True)) == {1}


def test_a_row_is_either_started_or_handed_back_never_both():
    claim = Claim("default", "token", [queries.Claimed(i, "s", "r", {}, 1, 8) for i in (1, 2, 3, 4)])
    assert claim.next().id == 1
    claim.ran(1, True)
    assert claim.next().id == 2
    assert claim.hand_back_if_stuck(60) is None, "row 2 has not run a minute"
    assert claim.held() == [1, 2, 3, 4]
    # Row 2 hangs: the heartbeat takes the row already run and the unstarted rest.
    assert claim.hand_back_if_stuck(0) == ([1], [3, 4])
    assert claim.held() == [2], "only the row in hand is still leased"
    assert claim.hand_back_if_stuck(0) is None, "handed back once"
    claim.ran(2, True)
    assert claim.next() is None, "a row handed back is not started"
    assert claim.held() == [2], "run, not yet written done"
    assert claim.settled
    assert claim.hand_back() == ([2], [])
    assert (claim.started, claim.succeeded) == (2, 2)


def test_a_reclaim_gives_back_a_batch_attempt_and_keeps_the_attempt_of_the_row_in_hand():
    with transaction.atomic():
        for key in ("in-hand", "waiting"):
            work.send(sender=None, key=key)
    in_hand, waiting = (_event(key).pk for key in ("in-hand", "waiting"))

    def expire():
        Event.objects.update(available_at=timezone.now() - datetime.timedelta(seconds=1))

    _, rows = queries.claim("default", 10, 60, "dead")
    assert [(r.attempts, r.alone) for r in rows] == [(1, False)] * 2, "counted for the batch"
    expire()
    token, rows = queries.claim("default", 10, 60, "rescuer")
    assert [(r.attempts, r.alone) for r in rows] == [(0, True)] * 2, "given back: orphans"
    assert queries.run_alone("default", token, in_hand) == 1
    expire()  # the rescuer dies in that row's receiver
    token, rows = queries.claim("default", 10, 60, "third")
    assert {r.id: (r.attempts, r.alone) for r in rows} == {in_hand: (1, True), waiting: (0, True)}
    assert queries.run_alone("default", "stale-token", in_hand) is None, "fenced"
    assert queries.release("default", token, [waiting]) == 1
    assert _event("waiting").attempts == 0, "an orphan's release undoes no attempt"
