"""The django-q2 relay: run_outbox hands committed events to a qcluster, which runs each once.

The cluster tests start real processes: ``manage.py qcluster`` (4 workers, the Redis
broker on a database number of its own or the ORM broker on the test database) and
``manage.py run_outbox`` with ``OUTBOX["DISPATCHER"] = "outbox.dispatch.django_q2"``.

The 5,000-event drains run on PostgreSQL; on SQLite they drain 500. SQLite has one write
lock for the whole file, so five processes writing a row per receiver call and per
completion take turns on it (and wait on each other's busy timeouts): the count proves
nothing more there, and would take minutes of the suite's time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter

import pytest
from django.db import connection, transaction
from django.test import override_settings

from outbox import checks
from outbox.dispatch import django_q2
from outbox.models import Event
from outbox.operations import replay
from outbox.worker import Worker
from tests.conftest import REDIS_PREFIX, REDIS_URL, ROOT, delete_test_keys, wait_for, worker_env
from tests.testapp.models import Call
from tests.testapp.signals import charged, work

pytestmark = pytest.mark.django_db(transaction=True)

RELAY = "outbox.dispatch.django_q2"
WORKERS = 4
TASK_SIZE = 10


def drain_count() -> int:
    return 5000 if connection.vendor == "postgresql" else 500


def send(n: int, prefix: str = "k", signal=work, **kwargs) -> list[str]:
    keys = [f"{prefix}{i}" for i in range(n)]
    with transaction.atomic():
        for key in keys:
            signal.send(sender=None, key=key, **kwargs)
    return keys


def relay_env(broker: str, **outbox: object) -> dict[str, str]:
    # Persistent connections: django-q2 closes obsolete ones before every task.
    env = {
        "OUTBOX_TEST_Q2_BROKER": broker,
        "OUTBOX_TEST_REDIS_URL": REDIS_URL,
        "OUTBOX_TEST_CONN_MAX_AGE": "60",
    }
    env.update({f"OUTBOX_TEST_{name}": str(value) for name, value in outbox.items()})
    return env


class Cluster:
    """``manage.py qcluster`` in its own session, so that SIGKILL takes every process of
    it at once (sentinel, pusher, workers, monitor), as when its machine dies."""

    def __init__(self, env: dict[str, str]):
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the cluster
        self.process = subprocess.Popen(
            [sys.executable, "-m", "django", "qcluster", "--settings=tests.settings"],
            cwd=ROOT,
            env={**os.environ, **worker_env(), **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()


@pytest.fixture
def cluster():
    started: list[Cluster] = []

    def start(env: dict[str, str]) -> Cluster:
        one = Cluster(env)
        started.append(one)
        return one

    yield start
    for one in started:
        one.kill()
        one.log.close()


def done() -> int:
    return Event.objects.filter(status="done").count()


def keys_called(receiver: str = "record") -> Counter:
    return Counter(Call.objects.filter(receiver=receiver).values_list("key", flat=True))


# --- the relay and its task, in this process ---------------------------------------------


def relay_once() -> Worker:
    worker = Worker(once=True, listen=False, dispatcher=django_q2.Dispatcher())
    worker.run()
    return worker


def queued_tasks() -> list[dict]:
    from django_q.models import OrmQ

    return [row.task for row in OrmQ.objects.order_by("id")]


def test_the_relay_hands_over_ids_and_a_token_only_and_leaves_rows_leased():
    send(25)
    with override_settings(OUTBOX={"RELAY_TASK_SIZE": 10, "RELAY_LEASE_SECONDS": 300}):
        worker = relay_once()
    assert worker.processed == 25
    assert worker.lease_seconds == 300
    tasks = queued_tasks()
    assert [len(task["args"][2]) for task in tasks] == [10, 10, 5]
    for task in tasks:
        assert task["func"] == django_q2.TASK
        database, token, ids = task["args"]
        assert database == "default" and len(token) == 32 and all(type(i) is int for i in ids)
        assert task["kwargs"] == {} and task["save"] is False
    assert set(Event.objects.values_list("status", flat=True)) == {"running"}
    assert Call.objects.count() == 0


def test_a_relayed_task_runs_its_events_once_and_a_duplicate_runs_nothing():
    keys = send(12)
    with override_settings(OUTBOX={"RELAY_TASK_SIZE": 12}):
        relay_once()
    [task] = queued_tasks()
    assert django_q2.run_relayed(*task["args"]) == 12
    assert django_q2.run_relayed(*task["args"]) == 0
    assert keys_called() == Counter(keys)
    assert done() == 12
    assert set(Event.objects.values_list("attempts", flat=True)) == {1}


def test_a_late_task_cannot_overwrite_the_result_of_the_relay_that_replaced_it():
    [key] = send(1)
    relay_once()
    [late] = queued_tasks()
    # Its lease expires while it waits in the queue: the relay hands the event over again.
    Event.objects.update(available_at=Event.objects.get().available_at.replace(year=2000))
    relay_once()
    newer = queued_tasks()[1]
    assert newer["args"][1] != late["args"][1]
    assert django_q2.run_relayed(*newer["args"]) == 1
    event = Event.objects.get()
    assert django_q2.run_relayed(*late["args"]) == 0
    assert Event.objects.get().finished_at == event.finished_at
    # Relayed again after its lease expired: the attempt the first relay counted was given
    # back (that task never ran), and the one that ran it counted its own.
    assert (event.status, event.attempts) == ("done", 1)
    assert keys_called() == Counter([key])


def test_a_failure_in_a_relayed_task_is_recorded_on_the_outbox_row():
    send(1, prefix="order", signal=charged)
    relay_once()
    [task] = queued_tasks()
    assert django_q2.run_relayed(*task["args"]) == 0
    event = Event.objects.get()
    assert event.status == "pending" and event.attempts == 1
    assert "payment gateway rejected order0" in event.last_error
    assert "Traceback" in event.last_traceback and "in charge" in event.last_traceback


@pytest.mark.parametrize(
    "args",
    [
        ("default", "not-a-token", [1]),
        ("elsewhere", "0" * 32, [1]),
        ("default", "0" * 32, ["1; DROP TABLE outbox_event"]),
        ("default", "0" * 32, "1"),
    ],
)
def test_a_malformed_task_is_refused(args):
    from outbox.exceptions import DispatchError

    with pytest.raises(DispatchError, match="malformed relayed task"):
        django_q2.run_relayed(*args)


def test_the_relay_is_a_configuration_error_without_django_q(monkeypatch):
    with override_settings(OUTBOX={"DISPATCHER": RELAY}):
        assert checks.check_dispatcher() == []
        with override_settings(INSTALLED_APPS=["django.contrib.contenttypes", "outbox"]):
            [error] = checks.check_dispatcher()
            assert error.id == "outbox.E006" and "not in INSTALLED_APPS" in error.msg
        monkeypatch.setattr(django_q2.importlib.util, "find_spec", lambda name: None)
        [error] = checks.check_dispatcher()
        assert error.id == "outbox.E006" and "not installed" in error.msg and "[q2]" in error.hint
    with override_settings(OUTBOX={"DISPATCHER": "outbox.dispatch.nowhere"}):
        [error] = checks.check_dispatcher()
        assert error.id == "outbox.E006" and "cannot be imported" in error.msg


# --- a real cluster ----------------------------------------------------------------------


def start_relay(worker_process, broker: str, **outbox: object):
    env = relay_env(broker, DISPATCHER=RELAY, RELAY_TASK_SIZE=TASK_SIZE, **outbox)
    return worker_process("--no-listen", "--poll-interval", "0.1", env=env)


@pytest.mark.parametrize("broker", ["redis", "orm"])
def test_a_cluster_drains_the_relayed_events_running_each_receiver_once(
    broker, request, cluster, worker_process
):
    if broker == "redis":
        request.getfixturevalue("redis_db")
    n = drain_count()
    keys = send(n)
    relay = start_relay(worker_process, broker)
    workers = cluster(relay_env(broker))
    wait_for(lambda: done() == n, timeout=240, interval=0.5)
    assert keys_called() == Counter(keys)
    assert set(Event.objects.values_list("attempts", flat=True)) == {1}
    pids = set(Call.objects.values_list("worker_pid", flat=True))
    assert relay.process.pid not in pids and len(pids) > 1, workers.output()[-2000:]
    assert Event.objects.filter(worker__endswith="django-q2").count() == n


def test_a_cluster_killed_mid_run_and_restarted_loses_nothing(redis_db, cluster, worker_process):
    n = drain_count() // 5
    keys = send(n, sleep=0.01)
    start_relay(worker_process, "redis", LEASE_SECONDS=3, RELAY_LEASE_SECONDS=10, RELAY_QUEUE_LIMIT=20)
    first = cluster(relay_env("redis", LEASE_SECONDS=3))
    wait_for(lambda: Call.objects.count() >= n // 5, timeout=120, interval=0.1)
    first.kill()
    assert done() < n
    cluster(relay_env("redis", LEASE_SECONDS=3))
    wait_for(lambda: done() == n, timeout=180, interval=0.5)
    seen = keys_called()
    assert set(seen) == set(keys)
    # At least once: a receiver that finished when the machine died, before its row was
    # marked done, runs again. Only the tasks in the killed workers' hands can be among them.
    again = [key for key, count in seen.items() if count > 1]
    assert len(again) <= WORKERS * TASK_SIZE, again


def test_redis_losing_the_queued_tasks_mid_run_loses_nothing(redis_db, cluster, worker_process):
    n = drain_count() // 5 + 200
    keys = send(n, sleep=0.005)
    start_relay(worker_process, "redis", RELAY_LEASE_SECONDS=4, RELAY_QUEUE_LIMIT=20)
    cluster(relay_env("redis"))
    wait_for(lambda: Call.objects.count() >= 50, timeout=120, interval=0.05)
    assert redis_db.llen(f"{REDIS_PREFIX}q") > 0
    # What a flushed or restarted Redis without persistence does to the cluster's tasks,
    # confined to the test cluster's keys.
    assert delete_test_keys(redis_db) > 0
    wait_for(lambda: done() == n, timeout=180, interval=0.5)
    assert keys_called() == Counter(keys)
    # The tasks that were in Redis are gone; their events were relayed again, as orphans
    # of a lost task: run alone, each marked in hand by its own write.
    assert Event.objects.filter(batch_attempt=False).exists()


def test_a_receiver_failing_in_the_cluster_ends_failed_with_its_traceback_and_replays(
    cluster, worker_process
):
    keys = send(3, prefix="order", signal=charged)
    start_relay(worker_process, "orm")
    cluster(relay_env("orm"))
    wait_for(lambda: Event.objects.filter(status="failed").count() == 3, timeout=120, interval=0.2)
    for event in Event.objects.all():
        assert event.attempts == 2
        assert event.last_error.startswith("RuntimeError: the payment gateway rejected order")
        assert "Traceback" in event.last_traceback and "in charge" in event.last_traceback
    assert keys_called("charge") == Counter()
    Call.objects.bulk_create([Call(receiver="fixed", key=key, worker_pid=0) for key in keys])
    assert replay(Event.objects.all()).changed == 3
    wait_for(lambda: done() == 3, timeout=120, interval=0.2)
    assert keys_called("charge") == Counter(keys)


def test_with_the_broker_down_the_relay_hands_the_batch_back_and_keeps_going(worker_process):
    send(5)
    env = relay_env("redis", DISPATCHER=RELAY)
    env["OUTBOX_TEST_REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    relay = worker_process("--no-listen", "--poll-interval", "0.1", env=env)
    wait_for(lambda: relay.output.count("could not hand 5 events to django-q2") >= 2, timeout=60)
    assert relay.process.poll() is None
    # Between tries the batch is back in the outbox, its attempt not counted.
    wait_for(lambda: set(Event.objects.values_list("status", "attempts")) == {("pending", 0)}, timeout=10)


def test_a_receiver_timeout_puts_back_the_alarm_of_the_task_queue_running_it():
    """django-q2 bounds each task with alarm(); a receiver's own timeout must not cancel it."""
    from outbox.execution import _call

    def task_timeout(signum, frame):
        raise AssertionError("the task queue's alarm fired during the test")

    previous = signal.signal(signal.SIGALRM, task_timeout)
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        _call(lambda **kwargs: None, 1.0, key="k")
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 20 < remaining <= 30
        assert signal.getsignal(signal.SIGALRM) is task_timeout
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
