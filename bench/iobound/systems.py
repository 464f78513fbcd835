"""The systems of the I/O-bound phase: how to start each one's worker and empty its queue."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
BIN = Path(sys.executable).parent
DJANGO = [PY, "-m", "django"]
CELERY = [str(BIN / "celery"), "-A", "bench.iobound.celery_app", "worker", "--loglevel", "WARNING"]


@dataclass(frozen=True)
class Config:
    """One measured worker: a system, the kind of body (sync or async) and its concurrency."""

    system: str
    mode: str
    concurrency: int

    @property
    def key(self) -> str:
        return f"{self.system}.{self.mode}.{self.concurrency}"


# (system, mode, label): the rows of the table, in order.
ROWS = [
    ("ours", "sync", "outbox (ours), `run_outbox --concurrency N`, `def` receiver"),
    ("ours", "async", "outbox (ours), `run_outbox --concurrency N`, `async def` receiver"),
    ("celery-threads", "sync", "Celery, `--pool threads --concurrency N`"),
    (
        "celery-threads",
        "backlog",
        "Celery, `--pool threads`, the worker alone (backlog published first)",
    ),
    ("celery-prefork", "sync", "Celery, `--pool prefork --concurrency N` (default pool)"),
    ("procrastinate", "async", "procrastinate, `worker --concurrency N`, `async def` task"),
    ("procrastinate", "sync", "procrastinate, `worker --concurrency N`, `def` task"),
    ("q2", "sync", "django-q2, a cluster of N workers"),
]
DATABASE = {"ours": "ours", "celery-threads": "celery", "celery-prefork": "celery"}
DATABASES = ["ours", "celery", "procrastinate", "q2"]
# Systems whose worker concurrency is N processes: the ones --max-procs caps.
PROCESS_POOLS = {"celery-prefork", "q2"}
CELERY_QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench_io")


def database(system: str) -> str:
    return DATABASE.get(system, system)


def ours_has_concurrency(env: dict[str, str]) -> bool:
    """Does this checkout's ``run_outbox`` take ``--concurrency``? (main did not, before issue 11)"""
    out = subprocess.run(
        [*DJANGO, "run_outbox", "--help"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    return "--concurrency" in out.stdout


def worker_command(config: Config, workers: int) -> tuple[list[str], dict[str, str]]:
    """The command line (and extra environment) of one worker process at ``workers``."""
    n = str(workers)
    if config.system == "ours":
        return [*DJANGO, "run_outbox", *(["--concurrency", n] if workers > 1 else [])], {}
    if config.system == "celery-threads":
        return [*CELERY, "--pool", "threads", "--concurrency", n], {}
    if config.system == "celery-prefork":
        return [*CELERY, "--pool", "prefork", "--concurrency", n], {}
    if config.system == "procrastinate":
        return [*DJANGO, "procrastinate", "worker", "--concurrency", n], {}
    if config.system == "q2":
        return [*DJANGO, "qcluster"], {"BENCH_Q2_WORKERS": n}
    raise ValueError(config.system)


TRUNCATE = {
    "ours": "TRUNCATE outbox_event RESTART IDENTITY",
    "procrastinate": "TRUNCATE procrastinate_jobs RESTART IDENTITY CASCADE",
    "q2": "TRUNCATE django_q_ormq, django_q_task RESTART IDENTITY",
}
# SELECT: how many jobs are still waiting or claimed (Celery: asked of Redis instead).
UNFINISHED = {
    "ours": "SELECT count(*) FROM outbox_event WHERE status IN ('pending', 'running')",
    "procrastinate": "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
    "q2": "SELECT count(*) FROM django_q_ormq",
}


def celery_keys(redis) -> list[bytes]:
    """Our Celery queue's keys in the phase's Redis database (never the whole database)."""
    keys = []
    patterns = [CELERY_QUEUE, f"{CELERY_QUEUE}\x06*", f"_kombu.binding*.{CELERY_QUEUE}"]
    for pattern in [*patterns, "unacked", "unacked_index", "unacked_mutex", "_kombu.binding_deadlines"]:
        keys.extend(redis.scan_iter(match=pattern))
    return keys


def celery_consuming(consume: bool) -> None:
    """Stop or resume the running worker's consumption of our queue (Celery's remote control),
    so that a backlog can be published in full before the worker takes any of it."""
    from bench.iobound.celery_app import app

    control = app.control.add_consumer if consume else app.control.cancel_consumer
    # A new connection each time declares the reply queue's binding afresh: reusing one
    # across steps lost the worker's replies after the first step (reset() between them).
    with app.connection_for_write() as connection:
        # A worker that has gone quiet may not listen to its remote control yet: ask until
        # it answers a ping.
        deadline = time.time() + 30
        while not app.control.ping(timeout=1.0, connection=connection):
            if time.time() > deadline:
                raise RuntimeError("the Celery worker did not answer its remote control")
        if not control(CELERY_QUEUE, reply=True, timeout=5.0, connection=connection):
            raise RuntimeError("the Celery worker did not answer its remote control")


def celery_unfinished(redis) -> int:
    return redis.llen(CELERY_QUEUE) + redis.hlen("unacked")
