"""The chaos run: worker processes drain events while they are SIGKILLed at random and
restarted, and PostgreSQL itself is restarted once. Nothing may be lost; duplicate calls
are counted and must stay within the rows that were in flight when something died.

``make chaos`` runs it at full size on its own database::

    python -m stress.chaos --events 20000 --workers 4          # kills and one restart
    python -m stress.chaos --events 20000 --workers 4 --calm   # neither: no duplicates at all
    python -m stress.chaos --events 20000 --workers 4 --no-restart --concurrency 8

``tests/test_chaos.py`` runs the same code at a size that fits in CI.

Every call of the receiver (``tests.testapp.faults.chaos_record``) inserts a ``Call`` row
that commits at once, outside the worker's bookkeeping, so a call whose completion a kill
swallowed is still counted: duplicates are ``calls - distinct keys``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/outbox_chaos"


@dataclass
class Report:
    """What a run did and what it found."""

    events: int
    workers: int
    kills: int = 0
    restarts: int = 0
    crashes: int = 0
    startup_failures: int = 0
    in_flight_at_kills: int = 0
    in_flight_at_restarts: int = 0
    calls: int = 0
    duplicates: int = 0
    lost: int = 0
    not_done: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def duplicate_bound(self) -> int:
        """Calls that may run twice: rows a killed worker held, plus every row that could be
        in flight when PostgreSQL went away (all workers' batches)."""
        return self.in_flight_at_kills + self.in_flight_at_restarts

    def problems(self) -> list[str]:
        """Broken promises; empty when the run kept every one."""
        found = []
        if self.lost:
            found.append(f"{self.lost} events were never run")
        if self.not_done:
            found.append(f"events not done: {self.not_done}")
        if self.duplicates > self.duplicate_bound:
            found.append(f"{self.duplicates} duplicate calls, more than the {self.duplicate_bound} in flight")
        if self.crashes:
            found.append(f"{self.crashes} running workers died (see their logs above)")
        if not self.kills and not self.restarts and not self.crashes and self.duplicates:
            found.append(f"{self.duplicates} duplicate calls in a run where nothing died")
        return found

    def __str__(self) -> str:
        rate = self.events / self.wall_seconds if self.wall_seconds else 0.0
        lines = [
            f"events              {self.events}",
            f"workers             {self.workers}",
            f"kills (SIGKILL)     {self.kills}  ({self.in_flight_at_kills} rows in flight at those kills)",
            f"postgres restarts   {self.restarts}  (allowance {self.in_flight_at_restarts} rows in flight)",
            f"worker crashes      {self.crashes}  (and {self.startup_failures} failed to start: server down)",
            f"receiver calls      {self.calls}",
            f"duplicates          {self.duplicates}  (bound {self.duplicate_bound})",
            f"lost                {self.lost}",
            f"not done            {sum(self.not_done.values())}",
            f"wall time           {self.wall_seconds:.1f} s  ({rate:.0f} events/s)",
        ]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def restart_command() -> list[str] | None:
    """The command that restarts the local PostgreSQL, or None where there is none."""
    versions = sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").is_dir() else []
    if not shutil.which("pg_ctlcluster") or not versions:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].parent.name, "main", "restart"]


def database_url() -> str:
    """The URL of Django's default database, for the worker processes."""
    from django.db import connection

    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    scheme, port = ("mysql", 3306) if connection.vendor == "mysql" else ("postgres", 5432)
    return f"{scheme}://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or port}/{db['NAME']}"


class _Workers:
    def __init__(self, count: int, args: list[str], logs: Path) -> None:
        self.args, self.logs = args, logs
        # INFO: started() looks for the start-up line, which LOGGING's WARNING would hide.
        self.env = {
            "OUTBOX_LOG_LEVEL": "INFO",
            **os.environ,
            "DATABASE_URL": database_url(),
            "PYTHONPATH": str(ROOT),
        }
        self.log_of: dict[int, Path] = {}
        self.procs: list[subprocess.Popen] = [self.start() for _ in range(count)]

    def start(self) -> subprocess.Popen:
        path = self.logs / f"worker-{time.monotonic_ns()}.log"
        command = [sys.executable, "-m", "django", "run_outbox", "--settings=tests.settings", *self.args]
        with open(path, "w") as log:
            proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.log_of[proc.pid] = path
        return proc

    def started(self, proc: subprocess.Popen) -> bool:
        """Whether the worker got as far as its loop (it logs its settings there)."""
        return " on database " in self.log_of[proc.pid].read_text()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _retrying(query, attempts: int = 60):
    """Run a harness query, riding out the PostgreSQL restart."""
    from django.db import InterfaceError, OperationalError, connections

    for attempt in range(attempts):
        try:
            return query()
        except (OperationalError, InterfaceError):
            connections.close_all()
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def send_events(count: int, per_transaction: int = 1000, pause: float = 0.0) -> None:
    """Send ``count`` chaos signals through the real send path, in a few transactions."""
    from django.db import transaction

    from tests.testapp.faults import chaos

    for start in range(0, count, per_transaction):
        with transaction.atomic():
            for i in range(start, min(count, start + per_transaction)):
                chaos.send(sender=None, key=str(i), pause=pause)


def run(
    events: int,
    workers: int = 4,
    *,
    kills: bool = True,
    restart: bool = False,
    kill_interval: tuple[float, float] = (2.0, 6.0),
    lease_seconds: float = 3.0,
    batch_size: int = 100,
    timeout: float = 600.0,
    seed: int | None = None,
    pause: float = 0.0,
    concurrency: int = 1,
    echo=print,
) -> Report:
    """Run the chaos scenario on Django's default database (migrated, PostgreSQL)."""
    from django.db import connection
    from django.db.models import Count

    from outbox.models import Event
    from tests.testapp.models import Call

    rng = random.Random(seed)
    Event.objects.all().delete()
    Call.objects.filter(receiver="chaos").delete()
    send_events(events, pause=pause)
    report = Report(events=events, workers=workers)
    restart_cmd = restart_command() if restart else None
    if restart and restart_cmd is None:
        report.notes.append("no pg_ctlcluster here: PostgreSQL was not restarted")

    logs = Path(tempfile.mkdtemp(prefix="outbox-chaos-"))
    args = ["--lease-seconds", str(lease_seconds), "--poll-interval", "0.2", "--batch-size", str(batch_size)]
    args += ["--concurrency", str(concurrency)]
    pool = _Workers(workers, args, logs)
    started = time.monotonic()
    next_kill = started + rng.uniform(*kill_interval)
    restart_at = events * rng.uniform(0.3, 0.6)
    active = Event.objects.filter(status__in=["pending", "running"])
    try:
        while True:
            remaining = _retrying(active.count)
            if not remaining:
                break
            if time.monotonic() - started > timeout:
                report.notes.append(f"gave up after {timeout:.0f} s with {remaining} events left")
                break
            for i, proc in enumerate(pool.procs):
                if proc.poll() is not None:
                    if pool.started(proc):
                        report.crashes += 1
                        echo(f"worker {proc.pid} died with exit status {proc.returncode}; restarting it")
                    else:
                        # Django's start-up checks need the database: a worker started
                        # while the server is down exits at once, for its supervisor to retry.
                        report.startup_failures += 1
                    pool.procs[i] = pool.start()
            if kills and time.monotonic() >= next_kill:
                # A worker holding rows, when one is: killing one that is still
                # starting up tests nothing.
                holders = set(
                    _retrying(
                        lambda: list(Event.objects.filter(status="running").values_list("worker", flat=True))
                    )
                )
                busy = [i for i, p in enumerate(pool.procs) if any(h.endswith(f":{p.pid}") for h in holders)]
                i = rng.choice(busy) if busy else rng.randrange(len(pool.procs))
                victim = pool.procs[i]
                victim.kill()
                victim.wait()
                held = _retrying(
                    Event.objects.filter(status="running", worker__endswith=f":{victim.pid}").count
                )
                report.kills += 1
                report.in_flight_at_kills += held
                pool.procs[i] = pool.start()
                next_kill = time.monotonic() + rng.uniform(*kill_interval)
            if restart_cmd and not report.restarts and events - remaining >= restart_at:
                echo(f"restarting PostgreSQL: {' '.join(restart_cmd)}")
                subprocess.run(restart_cmd, check=True, capture_output=True)
                connection.close()
                report.restarts += 1
                report.in_flight_at_restarts = workers * batch_size
            time.sleep(0.1)
        report.wall_seconds = time.monotonic() - started
    finally:
        pool.stop()

    calls = Call.objects.filter(receiver="chaos")
    report.calls = calls.count()
    keys = calls.values("key").distinct().count()
    report.duplicates = report.calls - keys
    report.lost = events - keys
    report.not_done = dict(
        Event.objects.exclude(status="done").values_list("status").annotate(n=Count("id")).order_by()
    )
    if report.crashes or report.problems():
        for log in sorted(logs.iterdir()):
            text = log.read_text()
            if "Traceback" in text:
                echo(f"--- {log.name} ---\n{text[-3000:]}")
    shutil.rmtree(logs, ignore_errors=True)
    return report


def _setup(url: str) -> None:
    """Point Django at ``url``, create the database if needed, and migrate it."""
    import django
    import psycopg
    from django.core.management import call_command
    from django.db import connection

    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    sys.path.insert(0, str(ROOT))
    django.setup()
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname="postgres", autocommit=True
    ) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{db["NAME"]}"')
    call_command("migrate", verbosity=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--calm", action="store_true", help="No kills and no restart.")
    parser.add_argument("--no-restart", action="store_true", help="Kills, but no PostgreSQL restart.")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--concurrency", type=int, default=1, help="Receivers each worker runs at once.")
    parser.add_argument("--database-url", default=os.environ.get("CHAOS_DATABASE_URL", DEFAULT_URL))
    options = parser.parse_args(argv)
    _setup(options.database_url)
    report = run(
        options.events,
        options.workers,
        kills=not options.calm,
        restart=not (options.calm or options.no_restart),
        seed=options.seed,
        concurrency=options.concurrency,
    )
    print(report)
    problems = report.problems()
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
