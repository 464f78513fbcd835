"""Whatever a receiver raises is recorded as its event's failure, and the worker goes on.

The error text is made storable first (a ``__str__`` that raises, NUL, lone surrogates),
and every ``BaseException`` counts, except Ctrl-C where it means "stop this process".
"""

from __future__ import annotations

import signal

import pytest
from django.db import transaction

from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import wait_for
from tests.testapp.faults import ctrl_c, misbehave, unrecordable
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)

#: What each receiver raises, and the last_error stored for it.
UNRECORDABLE = {
    "str() raises": "UnprintableError: <UnprintableError object: str() raised ValueError>",
    "NUL": "RuntimeError: before\\x00after",
    "lone surrogate": "RuntimeError: half a pair: \\ud800",
}
BASE_EXCEPTIONS = {
    "CancelledError": "CancelledError: the task was cancelled",
    "GeneratorExit": "GeneratorExit: ",
    "BaseException": "BaseException: a bare BaseException",
    "SystemExit": "SystemExit: 3",
    "KeyboardInterrupt": "KeyboardInterrupt: ",
}


def _failed(signal_name):
    return Event.objects.get(signal=f"tests.testapp.faults.{signal_name}")


@pytest.mark.parametrize("kind", list(UNRECORDABLE))
def test_an_error_whose_text_the_database_would_refuse_is_stored_cleaned(kind, drain):
    with transaction.atomic():
        unrecordable.send(sender=None, kind=kind)
        work.send(sender=None, key="after")
    assert drain(batch_size=10) == 2
    failed = _failed("unrecordable")
    assert failed.status == "failed"
    assert failed.last_error == UNRECORDABLE[kind]
    assert failed.last_traceback.startswith("Traceback (most recent call last):")
    assert "raise_unrecordable" in failed.last_traceback
    assert "\x00" not in failed.last_traceback
    assert Event.objects.get(signal="tests.testapp.signals.work").status == "done"
    assert list(Call.objects.values_list("key", flat=True)) == ["after"]


@pytest.mark.parametrize("kind", list(BASE_EXCEPTIONS))
def test_any_base_exception_a_receiver_raises_is_its_events_failure(kind, drain):
    with transaction.atomic():
        misbehave.send(sender=None, kind=kind)
        work.send(sender=None, key="after")
    assert drain(batch_size=10) == 2
    failed = _failed("misbehave")
    assert failed.status == "failed"
    assert failed.last_error == BASE_EXCEPTIONS[kind]
    assert "raise_base_exception" in failed.last_traceback
    assert list(Call.objects.values_list("key", flat=True)) == ["after"]


def test_a_worker_process_records_every_unrecordable_error_and_stays_up(worker_process):
    with transaction.atomic():
        for kind in UNRECORDABLE:
            unrecordable.send(sender=None, kind=kind)
            work.send(sender=None, key=f"after {kind}")
        for kind in ("CancelledError", "GeneratorExit", "BaseException"):
            misbehave.send(sender=None, kind=kind)
            work.send(sender=None, key=f"after {kind}")
    worker = worker_process("--poll-interval", "0.1", "--batch-size", "20")
    wait_for(lambda: Event.objects.filter(status__in=["done", "failed"]).count() == 12)
    assert worker.process.poll() is None, f"the worker is still running:\n{worker.output}"
    errors = sorted(Event.objects.filter(status="failed").values_list("last_error", flat=True))
    expected = [*UNRECORDABLE.values(), *(BASE_EXCEPTIONS[k] for k in ("CancelledError", "GeneratorExit"))]
    assert errors == sorted([*expected, BASE_EXCEPTIONS["BaseException"]])
    assert Call.objects.count() == 6
    # The first attempt was recorded: no crash left a row to expire and be given up on.
    assert set(Event.objects.values_list("attempts", flat=True)) == {1}
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_ctrl_c_where_python_turns_it_into_keyboardinterrupt_stops_the_run():
    # A batch run outside Worker.run() (a shell, a script) keeps Python's SIGINT handler:
    # Ctrl-C during a receiver is the operator stopping the process, not its failure.
    # Installed here: a shell that starts the suite in the background (nohup, CI runners)
    # may leave SIGINT ignored, and this test is about Python's own handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with transaction.atomic():
            ctrl_c.send(sender=None)
            work.send(sender=None, key="after")
        with pytest.raises(KeyboardInterrupt):
            Worker(listen=False, once=True).run_batch()
    finally:
        signal.signal(signal.SIGINT, previous)
    interrupted = _failed("ctrl_c")
    assert interrupted.status == "running", "left to its lease, not recorded as failed"
    assert interrupted.last_error == ""


def test_ctrl_c_to_a_worker_process_finishes_the_receiver_in_hand_and_exits_0(worker_process):
    with transaction.atomic():
        ctrl_c.send(sender=None)
        work.send(sender=None, key="after")
    worker = worker_process("--poll-interval", "0.1", "--batch-size", "10")
    assert worker.wait() == 0
    assert _failed("ctrl_c").status == "done"
    assert Call.objects.filter(receiver="presses_ctrl_c").count() == 1
    # The rest of the batch was handed back, due now, its attempt not counted.
    after = Event.objects.get(signal="tests.testapp.signals.work")
    assert (after.status, after.attempts) == ("pending", 0)
