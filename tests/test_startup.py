"""Starting a worker: an unreachable database is waited for, with backoff, as Celery, Oban
and River do; only a configuration error (an unmigrated database it can reach) exits."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest
from django.core.management import call_command
from django.db import connection

from tests.conftest import postgres_only, wait_for, worker_env
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)


class Forwarder:
    """A TCP forwarder from a free local port to PostgreSQL, started when the test says:
    until then nothing listens on the port, as while a database server restarts."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server: socket.socket | None = None

    def start(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
def forwarder():
    db = connection.settings_dict
    proxy = Forwarder((db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)))
    yield proxy
    proxy.close()


def _through(proxy: Forwarder) -> dict[str, str]:
    """The worker's environment, with the database reached through ``proxy``."""
    url = worker_env()["DATABASE_URL"]
    head, _, name = url.rpartition("/")
    host = head.rpartition("@")[0]
    return {"DATABASE_URL": f"{host}@127.0.0.1:{proxy.port}/{name}"}


def _wait_unavailable(worker) -> None:
    wait_for(lambda: "database unavailable" in worker.output or worker.process.poll() is not None, 30)
    assert worker.process.poll() is None, (
        f"the worker exited with {worker.process.returncode}:\n{worker.output}"
    )


@postgres_only
def test_a_worker_started_while_the_database_is_unreachable_waits_and_then_runs_events(
    forwarder, worker_process
):
    worker = worker_process("--poll-interval", "0.2", env=_through(forwarder), ready=False)
    _wait_unavailable(worker)
    assert "retrying" in worker.output
    time.sleep(2.0)
    assert worker.process.poll() is None, f"the worker gave up:\n{worker.output}"

    forwarder.start()
    work.send(sender=None, key="after-outage")
    wait_for(lambda: Call.objects.filter(key="after-outage").exists(), timeout=60)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output


@postgres_only
def test_sigterm_while_waiting_for_the_database_exits_0_promptly(forwarder, worker_process):
    worker = worker_process(env=_through(forwarder), ready=False)
    _wait_unavailable(worker)
    time.sleep(1.5)  # into a longer pause of the backoff
    asked = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output
    assert time.monotonic() - asked < 3


def test_a_worker_on_an_unmigrated_database_it_can_reach_exits_1_with_the_reason(worker_process):
    call_command("migrate", "outbox", "zero", verbosity=0)
    try:
        worker = worker_process(ready=False)
        assert worker.wait(timeout=60) == 1, worker.output
    finally:
        call_command("migrate", "outbox", verbosity=0)
    assert "unapplied outbox migration" in worker.output
    assert "manage.py migrate outbox" in worker.output
    assert "database unavailable" not in worker.output
