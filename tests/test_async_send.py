"""Sending from async code: asend writes deferred rows, on_commit async receivers run once
after commit, and a sync send() from async code is refused with a pointer to asend."""

from __future__ import annotations

import asyncio
import signal

import pytest
from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.db import connections, transaction
from django.dispatch import Signal
from django.test import AsyncClient

from outbox import SendFromAsyncContext
from outbox.models import Event
from tests.conftest import calls, wait_for
from tests.testapp.async_receivers import awaited, noticed
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)

needs_asend = pytest.mark.skipif(not hasattr(Signal, "asend"), reason="Signal.asend is new in Django 5.0")


class Refused(Exception):
    pass


@pytest.fixture(autouse=True)
def _close_executor_connections():
    """Code run by asyncio.run() sends its sync_to_async calls to asgiref's one shared
    thread, whose connections would outlive the test (and block dropping the test database)."""
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


def get(path, params):
    """A request to an async view through AsyncClient, from this sync test."""

    async def request():  # Django 4.2's AsyncClient.get is not itself a coroutine function
        return await AsyncClient().get(path, params)

    return async_to_sync(request)()


def delivered(worker_process, *expected):
    """Start a worker and wait until it has recorded each (receiver, key) in ``expected``."""
    proc = worker_process()
    for receiver, key in expected:
        wait_for(lambda r=receiver, k=key: Call.objects.filter(receiver=r, key=k).exists())
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.output
    assert set(Event.objects.values_list("status", flat=True)) == {"done"}


@needs_asend
def test_asend_from_asyncio_run_writes_rows_the_worker_delivers(worker_process):
    async def main():
        await work.asend(sender=None, key="asend")
        responses = await work.asend_robust(sender=None, key="robust")
        await awaited.asend(sender=None, key="async-receiver")
        return responses

    responses = asyncio.run(main())
    assert [response for _, response in responses] == [None]
    # Written in autocommit, so committed when asend returns.
    assert Event.objects.filter(status="pending").count() == 3
    delivered(worker_process, ("record", "asend"), ("record", "robust"), ("arecord", "async-receiver"))


@needs_asend
def test_asend_from_an_async_view_writes_rows_the_worker_delivers(worker_process):
    response = get("/async/send/", {"key": "from-view"})
    assert response.status_code == 200
    assert Event.objects.get().status == "pending"
    delivered(worker_process, ("record", "from-view"))


def test_an_async_view_s_writes_and_send_commit_together(worker_process):
    response = get("/async/write-and-send/", {"key": "kept"})
    assert response.status_code == 200
    assert Call.objects.filter(receiver="view", key="kept").exists()
    assert Event.objects.count() == 1
    # The on_commit async receiver ran once, after the commit.
    assert [kwargs["key"] for _, _, kwargs in calls("anotice")] == ["kept"]
    delivered(worker_process, ("record", "kept"))


def test_an_async_view_s_writes_and_send_roll_back_together():
    response = get("/async/write-and-send/", {"key": "gone", "fail": "1"})
    assert response.status_code == 409
    assert not Call.objects.exists()
    assert not Event.objects.exists()
    assert calls("anotice") == []


@needs_asend
@pytest.mark.parametrize("fail", [False, True])
def test_asend_inside_a_sync_to_async_atomic_commits_or_rolls_back_with_the_writes(fail):
    # asend runs the outbox's proxy with sync_to_async(thread_sensitive=True): called from
    # the thread that holds the atomic block, it writes on that thread's connection.
    @sync_to_async
    def write_and_asend():
        with transaction.atomic():
            Call.objects.create(receiver="view", key="inside", worker_pid=0)
            async_to_sync(work.asend)(sender=None, key="inside")
            async_to_sync(noticed.asend)(sender=None, key="inside")
            assert calls("anotice") == []  # not before the commit
            if fail:
                raise Refused

    async def main():
        try:
            await write_and_asend()
        except Refused:
            pass

    asyncio.run(main())
    assert Call.objects.filter(receiver="view").count() == (0 if fail else 1)
    assert Event.objects.count() == (0 if fail else 1)
    assert len(calls("anotice")) == (0 if fail else 1)


def test_an_async_on_commit_receiver_runs_once_after_commit():
    with transaction.atomic():
        noticed.send(sender=None, key="one")
        assert calls("anotice") == []
    [(_, sender, kwargs)] = calls("anotice")
    assert (sender, kwargs) == (None, {"signal": noticed, "key": "one"})


def test_an_async_on_commit_receiver_never_runs_for_a_rollback():
    with pytest.raises(Refused), transaction.atomic():
        noticed.send(sender=None, key="outer")
        raise Refused
    with transaction.atomic():
        try:
            with transaction.atomic():
                noticed.send(sender=None, key="savepoint")
                raise Refused
        except Refused:
            pass
    assert calls("anotice") == []


@needs_asend
def test_asend_runs_an_async_on_commit_receiver_once_in_autocommit():
    async def main():
        await noticed.asend(sender=None, key="auto")
        return [kwargs["key"] for _, _, kwargs in calls("anotice")]

    # Autocommit: "after commit" is at once, so asend returns once the receiver has run.
    assert asyncio.run(main()) == ["auto"]
    assert len(calls("anotice")) == 1


@pytest.mark.parametrize("sent", [work, noticed], ids=["deferred", "on_commit"])
def test_a_sync_send_from_async_code_points_at_asend_and_writes_nothing(sent):
    async def main():
        sent.send(sender=None, key="mistake")

    with pytest.raises(SendFromAsyncContext) as raised:
        asyncio.run(main())
    assert isinstance(raised.value, SynchronousOnlyOperation)
    name = "tests.testapp.signals.work" if sent is work else "tests.testapp.async_receivers.noticed"
    message = str(raised.value)
    assert message.startswith(f"{name}.send() was called from async code")
    if hasattr(Signal, "asend"):
        assert f"use 'await {name}.asend(...)' (or asend_robust)" in message
    assert "sync_to_async" in message
    assert not Event.objects.exists()
    assert calls("anotice") == []


def test_a_sync_send_in_an_async_view_gets_the_hint():
    response = get("/async/send-sync/", {"key": "mistake"})
    assert response.status_code == 500
    assert b"send() was called from async code" in response.content
    assert not Event.objects.exists()


def test_an_async_on_commit_receiver_under_a_running_loop_is_scheduled_on_it(monkeypatch):
    # Only with DJANGO_ALLOW_ASYNC_UNSAFE can a commit happen in a thread whose event loop is
    # running; waiting there would block the loop, so the receiver becomes a task on it.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    async def main():
        noticed.send(sender=None, key="on-the-loop")
        assert calls("anotice") == []  # not run inside send(): the loop runs it next
        for _ in range(100):
            await asyncio.sleep(0.01)
            if calls("anotice"):
                break
        connections.close_all()  # opened by send() in this context, which ends with the loop
        return [kwargs["key"] for _, _, kwargs in calls("anotice")]

    assert asyncio.run(main()) == ["on-the-loop"]
