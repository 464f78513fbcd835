"""async def receivers run by real worker processes: awaited to the end, retried, timed out."""

from __future__ import annotations

import functools
import gc
import signal
import time
import warnings

import pytest
from asgiref.sync import markcoroutinefunction
from django.db import transaction

from outbox import coroutines
from outbox.models import Event
from tests.conftest import wait_for
from tests.testapp.async_receivers import awaited, retried, stalled, unawaited
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)


def _event_by_key(key):
    [found] = [e for e in Event.objects.all() if key in str(e.payload)]
    return found


def called(receiver, key):
    return Call.objects.filter(receiver=receiver, key=key).exists()


def stop(proc):
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.output


def test_an_async_receiver_s_event_is_done_only_after_its_body_finished(worker_process):
    with transaction.atomic():
        awaited.send(sender=None, key="slow", hold=True)
    proc = worker_process()
    wait_for(lambda: called("arecord-start", "slow"))
    time.sleep(0.5)
    # The body is waiting at an await for the test's go-ahead: its event is in hand, not done.
    assert _event_by_key("slow").status == "running"
    assert not called("arecord", "slow")
    Call.objects.create(receiver="go", key="slow", worker_pid=0)
    wait_for(lambda: _event_by_key("slow").status == "done")
    # Done only once the body wrote its last row, read back through the async ORM first.
    assert called("arecord", "slow")
    assert Call.objects.get(receiver="arecord").worker_pid == proc.process.pid
    stop(proc)
    assert "never awaited" not in proc.output


def test_a_failing_async_receiver_is_retried_then_done(worker_process):
    with transaction.atomic():
        retried.send(sender=None, key="order-1")
    proc = worker_process()
    wait_for(lambda: _event_by_key("order-1").status == "done")
    stop(proc)
    assert _event_by_key("order-1").attempts == 2
    assert Call.objects.filter(receiver="acharge-failed", key="order-1").count() == 1
    assert Call.objects.filter(receiver="acharge", key="order-1").count() == 1
    retry = f"event {_event_by_key('order-1').id} tests.testapp.async_receivers.acharge failed, retry in"
    assert retry in proc.output
    assert "RuntimeError: the payment gateway rejected order-1" in proc.output


def test_an_async_receiver_past_its_timeout_is_cancelled_and_the_worker_goes_on(worker_process):
    with transaction.atomic():
        stalled.send(sender=None, key="stuck")
        work.send(sender=None, key="after")
    proc = worker_process()
    wait_for(lambda: _event_by_key("stuck").status == "failed", timeout=20)
    stuck = _event_by_key("stuck")
    assert stuck.last_error == "ReceiverTimeout: the receiver ran longer than its timeout of 0.5s"
    assert stuck.attempts == 1
    # Cancelled at its await, never finished; the next event runs in the same worker.
    assert called("astall-cancelled", "stuck")
    assert not called("astall", "stuck")
    wait_for(lambda: called("record", "after"))
    stop(proc)


def test_a_sync_receiver_returning_a_coroutine_fails_its_event_without_a_warning(drain):
    with transaction.atomic():
        unawaited.send(sender=None, key="lost")
    # Earlier tests' garbage first (an event loop left unclosed warns when it is collected, as
    # seen on Python 3.12 in random order): only what this drain leaves behind is recorded.
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert drain() == 1
        gc.collect()  # a coroutine never awaited warns when it is collected
    assert [str(w.message) for w in caught] == []
    lost = _event_by_key("lost")
    assert lost.status == "failed"
    assert lost.last_error.startswith(
        "AwaitableReturned: tests.testapp.async_receivers.returns_coroutine is not an async function "
        "but returned a coroutine, which was never awaited"
    )
    assert not called("returns_coroutine", "lost")


def test_a_sync_receiver_returning_a_coroutine_fails_in_a_worker_process(worker_process):
    with transaction.atomic():
        unawaited.send(sender=None, key="lost")
    proc = worker_process()
    wait_for(lambda: _event_by_key("lost").status == "failed")
    stop(proc)
    assert "AwaitableReturned" in _event_by_key("lost").last_error
    assert "never awaited" in _event_by_key("lost").last_error
    assert "RuntimeWarning" not in proc.output
    assert not called("returns_coroutine", "lost")


class _AsyncCallable:
    async def __call__(self, **kwargs):
        return kwargs


async def _coroutine_function(**kwargs):
    return kwargs


def _sync_function(**kwargs):
    return kwargs


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (_coroutine_function, True),
        (_AsyncCallable(), True),
        (functools.partial(_coroutine_function, a=1), True),
        (functools.partial(_AsyncCallable(), a=1), True),
        (markcoroutinefunction(lambda **kw: _coroutine_function()), True),
        (_sync_function, False),
        (functools.partial(_sync_function), False),
        (_AsyncCallable, False),  # the class: calling it makes an instance
    ],
)
def test_is_async_knows_every_kind_of_async_callable(func, expected):
    assert coroutines.is_async(func) is expected
