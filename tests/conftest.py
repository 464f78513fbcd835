"""Fixtures, and the rule for PostgreSQL and MariaDB/MySQL: unreachable fails the run under CI,
skips otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from outbox.worker import Worker
from tests.testapp import receivers

ROOT = Path(__file__).resolve().parent.parent


def _vendor() -> str:
    engine = settings.DATABASES["default"]["ENGINE"]
    return "postgresql" if "postgresql" in engine else engine.rsplit(".", 1)[-1]


def _mysql_problem() -> str | None:
    import MySQLdb

    db = settings.DATABASES["default"]
    try:
        MySQLdb.connect(
            host=db.get("HOST") or "127.0.0.1",
            port=int(db.get("PORT") or 3306),
            user=db.get("USER") or "root",
            password=db.get("PASSWORD") or "",
            connect_timeout=5,
        ).close()
    except MySQLdb.Error as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def _postgres_problem() -> str | None:
    if _vendor() == "mysql":
        return _mysql_problem()
    if _vendor() != "postgresql":
        return None
    import psycopg

    db = settings.DATABASES["default"]
    try:
        psycopg.connect(
            host=db.get("HOST") or None,
            port=db.get("PORT") or None,
            user=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            dbname="postgres",
            connect_timeout=5,
        ).close()
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def pytest_sessionstart(session):
    """Import every module of the app now, in the main thread, before any test starts threads.

    pytest rewrites the asserts of the package that ships its plugin (outbox.testing's
    entry point), so importing an outbox module parses it with ``ast``; CPython 3.11 before
    3.11.8 raises a spurious "AST constructor recursion depth mismatch" SystemError when
    another thread parses at the same moment (gh-106905), which worker threads do as they
    format a receiver's traceback. A lazy import in the middle of a test then fails it.
    """
    import importlib
    import pkgutil

    import outbox

    for module in pkgutil.walk_packages(outbox.__path__, "outbox."):
        try:
            importlib.import_module(module.name)
        except Exception:  # noqa: BLE001, S112 - an optional extra's module, tested where it is installed
            continue
    importlib.import_module(settings.ROOT_URLCONF)
    importlib.import_module("hypothesis")  # its pytest plugin imports it at the session's end


def pytest_report_header(config):
    db = settings.DATABASES["default"]
    where = f"{db.get('HOST') or 'local'}:{db.get('PORT') or ''}/{db['NAME']}"
    return f"outbox test database: {_vendor()} ({where})"


#: Fixtures that start real processes (``manage.py run_outbox``, ``manage.py qcluster``): a test
#: that uses one is marked ``processes`` without saying so itself.
PROCESS_FIXTURES = frozenset({"worker_process", "cluster"})

#: Markers that put a test in the slow tier, which ``make test-fast`` (``-m "not slow"``) leaves
#: out: every test that starts a process, drives a browser or builds the wheel is slow.
SLOW_MARKERS = ("processes", "browser", "packaging")


def _mark_tiers(items) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(item.fixturenames) or any(
            item.get_closest_marker(name) for name in ("browser", "packaging")
        ):
            item.add_marker(pytest.mark.processes)
        if any(item.get_closest_marker(name) for name in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)


# First, so that the tiers' markers are there when -m deselects.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    _mark_tiers(items)
    problem = _postgres_problem()
    if problem is None:
        return
    server = "MariaDB/MySQL" if _vendor() == "mysql" else "PostgreSQL"
    if os.environ.get("CI"):
        pytest.exit(f"{server} is unreachable and CI is set, so this is a failure: {problem}", returncode=3)
    skip = pytest.mark.skip(reason=f"{server} unreachable (set CI to make this fail): {problem}")
    for item in items:
        item.add_marker(skip)


postgres_only = pytest.mark.skipif(
    "postgresql" not in settings.DATABASES["default"]["ENGINE"], reason="PostgreSQL only"
)

#: The databases whose workers claim with SELECT ... FOR UPDATE SKIP LOCKED, so that many
#: share the work at once: PostgreSQL, MySQL and MariaDB (Django's "mysql" engine).
SKIP_LOCKED_VENDORS = ("postgresql", "mysql")
skip_locked_only = pytest.mark.skipif(
    _vendor() not in SKIP_LOCKED_VENDORS, reason="PostgreSQL, MySQL and MariaDB only (SKIP LOCKED)"
)

#: The environment variable that lets tests disturb servers shared with other developers
#: (restart the local PostgreSQL). ``.ci/run`` sets it; developers run them with
#: ``make test OUTBOX_TEST_DISRUPTIVE=1`` when nobody else uses the machine's servers.
DISRUPTIVE_VARIABLE = "OUTBOX_TEST_DISRUPTIVE"

disruptive = pytest.mark.skipif(
    os.environ.get(DISRUPTIVE_VARIABLE) != "1",
    reason=f"restarts a server other developers share: set {DISRUPTIVE_VARIABLE}=1 to run it (CI does)",
)

#: The tests' Redis database (a number of its own) and the key prefix of their django-q2
#: cluster (``Q_CLUSTER["name"]`` in tests/settings.py). Tests delete only keys under that
#: prefix, never the whole database.
REDIS_URL = os.environ.get("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
REDIS_PREFIX = "django_q:outbox-tests:"


def delete_test_keys(client) -> int:
    """Delete the test cluster's keys from ``client``'s database; return how many."""
    keys = list(client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000))
    return client.delete(*keys) if keys else 0


@pytest.fixture
def redis_db():
    """The tests' Redis database, with the test cluster's keys deleted before and after
    (never FLUSHDB: other clients may use the same database)."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is unreachable at {REDIS_URL} and CI is set: {exc}")
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {exc}")
    delete_test_keys(client)
    yield client
    delete_test_keys(client)
    client.close()


@pytest.fixture(autouse=True)
def _processes_only_where_marked(request, monkeypatch):
    """Fail a test that starts a process without the ``processes`` marker, so that the fast
    tier (``-m "not slow"``) stays free of them: mark the test, or use ``worker_process``."""
    if request.node.get_closest_marker("processes") is not None:
        return

    def refuse(self, args, *more, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a process ({args!r}) without @pytest.mark.processes"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(autouse=True)
def _reset_receivers():
    receivers.CALLS.clear()
    receivers.FAILURES["remaining"] = 0
    yield
    receivers.CALLS.clear()


@pytest.fixture
def drain():
    """Run an in-process worker until nothing is due; return how many events it handled."""

    def run(**options):
        options.setdefault("listen", False)
        return Worker(once=True, **options).run()

    return run


def calls(name=None):
    """The receiver calls recorded in this process, optionally for one receiver."""
    return [c for c in receivers.CALLS if name is None or c[0] == name]


class WorkerProcess:
    """``manage.py run_outbox`` in a real process, on the test database.

    Output goes to a file, not a pipe: a worker logging every event would otherwise block
    once the pipe's buffer is full.
    """

    def __init__(self, *args: str, env: dict | None = None, ready: bool = True):
        # INFO unless the run says otherwise: tests wait for the worker's start-up line, and
        # run_outbox keeps the level LOGGING gives "outbox" (tests/settings.py) without -v.
        environment = {"OUTBOX_LOG_LEVEL": "INFO", **os.environ, **worker_env(), **(env or {})}
        self.log = tempfile.NamedTemporaryFile("w+", prefix="outbox-worker-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "django", "run_outbox", "--settings=tests.settings", *args],
            cwd=ROOT,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if ready:
            self.wait_ready()

    @property
    def output(self) -> str:
        with open(self.log.name) as log:
            return log.read()

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the worker has installed its signal handlers and started its loop."""
        wait_for(lambda: " on database " in self.output or self.process.poll() is not None, timeout)
        assert self.process.poll() is None, f"the worker exited early:\n{self.output}"

    def signal(self, signum=signal.SIGTERM):
        self.process.send_signal(signum)

    def wait(self, timeout=30):
        self.process.wait(timeout=timeout)
        return self.process.returncode

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


def worker_env() -> dict[str, str]:
    """Environment that points a child process at the test database."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        url = f"sqlite:///{db['NAME']}"
    else:
        auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
        scheme, port = ("mysql", 3306) if connection.vendor == "mysql" else ("postgres", 5432)
        url = f"{scheme}://{auth}@{db['HOST']}:{db['PORT'] or port}/{db['NAME']}"
    return {"DATABASE_URL": url, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def worker_process():
    started = []

    def start(*args, **kwargs):
        proc = WorkerProcess(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def wait_for(predicate, timeout=30.0, interval=0.02):
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def listening_sessions() -> int:
    """PostgreSQL sessions on the test database waiting for a NOTIFY: one per idle worker.

    A worker waiting on LISTEN holds the outbox's "waiting" advisory lock (outbox.wakeup).
    """
    from outbox.wakeup import wake_locks

    (waiting_class, _), _ = wake_locks("outbox")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE a.datname = current_database() AND l.locktype = 'advisory' AND l.granted "
            "AND l.classid = %s AND l.objsubid = 2",
            [waiting_class],
        )
        return cursor.fetchone()[0]
