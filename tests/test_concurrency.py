"""One worker, many receivers at once (``run_outbox --concurrency N``): sync receivers in
threads, async ones on an event loop; nothing runs twice, nothing is lost on SIGTERM or
SIGKILL, timeouts hold, and successes are still written done in batches."""

from __future__ import annotations

import re
import signal
import time
from collections import Counter

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import transaction

from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import wait_for
from tests.operating import run
from tests.testapp import slow_receivers
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = {"OUTBOX_TEST_SLOW_RECEIVERS": "1"}


@pytest.fixture(autouse=True)
def _slow_receivers():
    slow_receivers.connect()


def _send(signal_, count, sleep, prefix="job", mark_start=False):
    with transaction.atomic():
        for i in range(count):
            signal_.send(sender=None, key=f"{prefix}-{i}", sleep=sleep, mark_start=mark_start)


def _started(count):
    """``count`` receivers have begun (a row's ``running`` status says only "claimed")."""
    return Call.objects.filter(receiver="started").count() >= count


def _keys(receiver):
    return Counter(Call.objects.filter(receiver=receiver).values_list("key", flat=True))


def _all_done():
    return not Event.objects.exclude(status="done").exists()


KINDS = {"sync": (work, "record"), "async": (slow_receivers.waited, "wait_async")}


@pytest.mark.parametrize("kind", KINDS)
def test_40_receivers_of_half_a_second_drain_in_a_fraction_of_20_seconds(kind, worker_process):
    signal_, receiver = KINDS[kind]
    worker = worker_process("--concurrency", "20", env=SLOW)
    began = time.monotonic()
    _send(signal_, 40, sleep=0.5)
    wait_for(_all_done, timeout=60)
    elapsed = time.monotonic() - began
    # One after another: 20 s. Twenty at a time: two rounds of 0.5 s, plus the machine's
    # start-up of twenty threads and their connections.
    assert elapsed < 6, f"40 x 0.5 s took {elapsed:.1f}s at concurrency 20"
    assert _keys(receiver) == Counter(f"job-{i}" for i in range(40)), "each ran once"
    assert set(Event.objects.values_list("attempts", flat=True)) == {1}
    assert "database is locked" not in worker.output
    assert "Traceback" not in worker.output, worker.output


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_mid_flight_finishes_the_receivers_in_hand_hands_back_the_rest_and_exits_0(
    kind, worker_process
):
    signal_, receiver = KINDS[kind]
    worker = worker_process("--concurrency", "10", "--lease-seconds", "600", env=SLOW)
    _send(signal_, 40, sleep=1.0, mark_start=True)
    wait_for(lambda: _started(1), timeout=60)  # receivers are in hand
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output
    assert not Event.objects.filter(status="running").exists(), "no row is left leased"
    done = set(Event.objects.filter(status="done").values_list("id", flat=True))
    assert 1 <= len(done) <= 20, "the receivers in hand finished; the worker claimed no more"
    assert sum(_keys(receiver).values()) == len(done), "each done event ran once, and only those"
    handed_back = Event.objects.filter(status="pending")
    assert handed_back.count() == 40 - len(done)
    assert {e.attempts for e in handed_back} == {0}, "their attempt undone"
    # Another worker takes the rest at once, not after the 600 s lease.
    worker_process("--concurrency", "10", env=SLOW)
    wait_for(_all_done, timeout=60)
    assert _keys(receiver) == Counter(f"job-{i}" for i in range(40)), "nothing lost, nothing twice"


def test_once_the_receivers_in_hand_turn_out_slow_the_unstarted_rest_goes_back(worker_process):
    worker_process("--concurrency", "2", "--batch-size", "10", "--lease-seconds", "600", env=SLOW)
    _send(work, 10, sleep=3)
    # After a second (HAND_BACK_AFTER) the eight rows no slot could start are due again, for
    # any worker, their attempt undone; only the two in hand stay leased.
    wait_for(lambda: Event.objects.filter(status="pending").count() == 8, timeout=30)
    running = Event.objects.filter(status="running")
    assert running.count() == 2 and not Call.objects.exists(), "handed back while the two still run"
    assert {e.attempts for e in Event.objects.filter(status="pending")} == {0}
    wait_for(_all_done, timeout=60)
    assert _keys("record") == Counter(f"job-{i}" for i in range(10))


def test_a_second_sigterm_exits_at_once(worker_process):
    worker = worker_process("--concurrency", "5", env=SLOW)
    _send(work, 5, sleep=30, mark_start=True)
    wait_for(lambda: _started(5), timeout=60)
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    asked = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) != 0
    assert time.monotonic() - asked < 5, "it did not wait for the 30 s receivers"


def test_a_killed_workers_rows_are_reclaimed_after_their_lease_and_run_once(worker_process):
    first = worker_process("--concurrency", "10", "--lease-seconds", "2", env=SLOW)
    _send(work, 10, sleep=3)
    wait_for(lambda: Event.objects.filter(status="running").count() == 10, timeout=60)
    time.sleep(0.5)  # inside the receivers, before they record anything
    first.signal(signal.SIGKILL)
    first.wait()
    assert not Call.objects.exists()
    worker_process("--concurrency", "10", env=SLOW)
    wait_for(_all_done, timeout=60)
    assert _keys("record") == Counter(f"job-{i}" for i in range(10))


def test_an_async_receiver_is_cancelled_at_its_timeout(worker_process):
    worker_process("--concurrency", "4", env=SLOW)
    began = time.monotonic()
    _send(slow_receivers.stuck_async_signal, 1, sleep=30)
    wait_for(lambda: Event.objects.filter(status="failed").exists(), timeout=30)
    assert time.monotonic() - began < 10, "two attempts of 0.5 s, not of 30 s"
    event = Event.objects.get()
    assert event.attempts == 2
    assert event.last_error.startswith("ReceiverTimeout: ")
    assert _keys("stuck_async:start") == {"job-0": 2}
    assert not _keys("stuck_async:end"), "cancelled: its body did not go on"


@pytest.mark.parametrize("exit", ["SystemExit", "KeyboardInterrupt"])
def test_an_async_receiver_raising_systemexit_or_ctrl_c_fails_its_event_alone(exit, worker_process):
    # asyncio re-raises these two out of a task and through the loop: they must stay the
    # receiver's failure, with or without a timeout, not stop the worker's event loop.
    worker = worker_process("--concurrency", "4", env=SLOW)
    with transaction.atomic():
        slow_receivers.exiting_signal.send(sender=None, key="bad", exit=exit)
    wait_for(lambda: Event.objects.filter(status="failed").count() == 2, timeout=30)
    assert {e.last_error for e in Event.objects.all()} == {f"{exit}: "}
    _send(slow_receivers.waited, 4, sleep=0.01, prefix="after")
    wait_for(lambda: len(_keys("wait_async")) == 4, timeout=30)
    worker.signal()
    assert worker.wait(timeout=30) == 0, worker.output


def test_a_sync_receiver_past_its_timeout_is_failed_and_held_until_its_thread_returns(worker_process, capsys):
    worker = worker_process("--concurrency", "4", env=SLOW)
    _send(slow_receivers.stuck_sync_signal, 1, sleep=3, prefix="stuck")
    wait_for(lambda: Event.objects.filter(worker__endswith="[overdue]").exists(), timeout=30)
    stuck = Event.objects.get(signal__endswith="stuck_sync_signal")
    # Failed at its timeout, but not claimable: its first run still goes on.
    assert (stuck.status, stuck.attempts) == ("running", 1)
    assert stuck.last_error.startswith("ReceiverTimeout: ")
    call_command("outbox_status")
    assert "overdue: 1 receivers ran past their timeout" in capsys.readouterr().out
    # Other events are not held up by it.
    _send(work, 5, sleep=0, prefix="fast")
    wait_for(lambda: Event.objects.filter(status="done").count() == 5, timeout=30)
    assert Event.objects.get(pk=stuck.pk).status == "running", "still held"
    assert _keys("stuck_sync:start") == {"stuck-0": 1}, "not run twice at once"
    # Its thread returns after 3 s: the planned retry runs, times out too, and is final.
    wait_for(lambda: Event.objects.get(pk=stuck.pk).status == "failed", timeout=30)
    stuck.refresh_from_db()
    assert stuck.attempts == 2
    assert "[overdue]" in stuck.worker
    assert "ran past its timeout" in worker.output
    calls = list(Call.objects.filter(receiver__startswith="stuck_sync").order_by("id"))
    assert [c.receiver for c in calls][:3] == ["stuck_sync:start", "stuck_sync:end", "stuck_sync:start"], (
        "the retry started only after the first run returned"
    )


def test_successes_are_written_done_many_rows_to_a_statement(worker_process):
    worker = worker_process("--concurrency", "10", "-v", "2", env=SLOW)
    _send(work, 200, sleep=0.02)
    wait_for(_all_done, timeout=60)
    wait_for(lambda: sum(_writes(worker.output)) >= 200, timeout=5)  # the line follows the write
    writes = _writes(worker.output)
    assert sum(writes) == 200, "every success written done once"
    assert len(writes) <= 200 / 4, f"{len(writes)} statements for 200 successes: not batched"


def _writes(output):
    return [int(n) for n in re.findall(r"wrote (\d+) events done in one statement", output)]


@pytest.mark.parametrize("bad", ["0", "1001", "two"])
def test_a_concurrency_out_of_its_range_is_refused_naming_the_range(bad):
    result = run("run_outbox", "--concurrency", bad, "--once")
    assert result.code == 1
    assert "--concurrency" in result.err
    assert ("from 1 to 1000" if bad != "two" else "is not a whole number") in result.err


def test_a_worker_takes_its_concurrency_from_the_setting(settings):
    settings.OUTBOX = {**settings.OUTBOX, "CONCURRENCY": 3}
    assert Worker(once=True, listen=False).concurrency == 3
    with pytest.raises(ImproperlyConfigured, match="concurrency must be a whole number from 1 to 1000"):
        Worker(once=True, listen=False, concurrency=0)
