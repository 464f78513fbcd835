"""Benchmark steps that run inside Django, one system's database per process.

``python -m bench.child ACTION SYSTEM [options]`` prints one JSON line with its result.
Actions: ``fill`` (pre-insert jobs in one transaction), ``write`` (the write-path client),
``latency`` (steady-rate sends timed to receiver start). The orchestrator is bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402

from bench.benchapp.models import Item  # noqa: E402
from bench.benchapp.signals import ping, work1, work3, work_now  # noqa: E402

# --- hand-offs: what each system does inside the user's transaction --------------------


def _handoffs() -> dict[str, Any]:
    from django_q.tasks import async_task

    from bench.benchapp.tasks import django_noop, django_ping, procrastinate_noop, procrastinate_ping

    pgqueuer = None
    if os.environ.get("BENCH_DATABASE_URL", "").endswith("_pgqueuer"):
        from pgqueuer.adapters.drivers.psycopg import SyncPsycopgDriver
        from pgqueuer.queries import SyncQueries

        # Built on Django's own connection while it is in autocommit (the driver insists),
        # then used inside atomic(): the enqueue is part of the user's transaction.
        connection.ensure_connection()
        pgqueuer = SyncQueries(SyncPsycopgDriver(connection.connection))

    return {
        "baseline": (lambda obj: None, None),
        "pgqueuer": (None, lambda n: pgqueuer.enqueue("ping", str(n).encode())),
        "ours1": (lambda obj: work1.send(sender=Item, item_id=obj.pk), lambda n: ping.send(sender=Item, n=n)),
        "ours3": (lambda obj: work3.send(sender=Item, item_id=obj.pk), None),
        # References: the bare statements, no framework (what a hand-off cannot go below).
        "raw_insert": (lambda obj: _raw(False), None),
        "raw_notify": (lambda obj: _raw(True), None),
        "on_commit": (lambda obj: work_now.send(sender=Item, item_id=obj.pk), None),
        "q2": (
            lambda obj: async_task("bench.benchapp.jobs.q2_noop", obj.pk),
            lambda n: async_task("bench.benchapp.jobs.q2_ping", n),
        ),
        "tasksdb": (lambda obj: django_noop.enqueue(obj.pk), lambda n: django_ping.enqueue(n)),
        "procrastinate": (
            lambda obj: procrastinate_noop.defer(item_id=obj.pk),
            lambda n: procrastinate_ping.defer(n=n),
        ),
    }


_RAW = (
    "INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts, available_at, "
    "worker, created_at, last_error, last_traceback) VALUES ('bench.benchapp.signals.work1', "
    "'bench.benchapp.receivers.noop', '{}'::jsonb, 'pending', 0, 8, now(), '', now(), '', '')"
)


def _raw(notify: bool) -> None:
    with connection.cursor() as cursor:
        if notify:
            # pg_notify computes last_error (''), as ours does when a worker waits.
            cursor.execute(_RAW.replace("now(), '', '')", "now(), pg_notify('bench', '')::text, '')"))
        else:
            cursor.execute(_RAW)


def write(system: str, seconds: float) -> dict[str, Any]:
    """The write path: ``with atomic(): obj.save(); <hand off>`` as fast as one client can.

    Alternates transactions of the baseline (save only) and of ``system``, timing each, so
    that noise from other work on the shared machine falls on both alike. Prints "ready"
    after a warm-up, waits for a start time on stdin, then runs for ``seconds``.
    """
    handoffs = [_handoffs()["baseline"][0], _handoffs()[system][0]]

    def one(handoff: Any) -> None:
        with transaction.atomic():
            obj = Item(name="bench", quantity=1)
            obj.save()
            handoff(obj)

    for _ in range(10):
        one(handoffs[0])
        one(handoffs[1])
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    while time.time() < start:
        time.sleep(0.001)
    end = start + seconds
    counts, spent = [0, 0], [0.0, 0.0]
    clock = time.perf_counter
    # Pairs of one transaction of each kind, in random order: a fixed order showed a bias
    # of about 5% towards whichever kind came second.
    while time.time() < end:
        for kind in (0, 1) if random.random() < 0.5 else (1, 0):
            began = clock()
            one(handoffs[kind])
            spent[kind] += clock() - began
            counts[kind] += 1
    return {
        "baseline": counts[0],
        "system": counts[1],
        "baseline_seconds": spent[0],
        "system_seconds": spent[1],
    }


# --- pre-inserting the drain backlog, each the fastest way its system allows ---------


def fill(system: str, count: int, payload: str, wait: bool) -> dict[str, Any]:
    """Insert ``count`` jobs in one transaction; with ``wait``, commit on a line from stdin."""
    started = time.time()
    with transaction.atomic():
        if system in ("ours", "floor"):
            _fill_ours(count, payload)
        elif system == "q2":
            _fill_q2(count)
        elif system == "tasksdb":
            _fill_tasksdb(count)
        elif system == "procrastinate":
            from bench.benchapp.tasks import procrastinate_noop

            procrastinate_noop.batch_defer(*({"item_id": 1} for _ in range(count)))
        elif system == "pgqueuer":
            _fill_pgqueuer(count, wait)
            wait = False  # it waited inside its own transaction
        else:
            raise SystemExit(f"unknown system {system}")
        if system != "pgqueuer":
            _analyze()
        prepared = time.time()
        if wait:
            sys.stdin.readline()
        committed_at = time.time()
    return {
        "committed_at": committed_at,
        "committed_done": time.time(),
        "prepare_seconds": prepared - started,
    }


def _analyze() -> None:
    """Refresh the planner's statistics before the backlog commits, for every system alike.

    reset() leaves each table truncated and analyzed as empty, and autovacuum is off on the
    machines this runs on, so without this every claim would be planned for an empty table
    (on ours, a bitmap scan that reads and sorts the whole backlog each time). In production
    autovacuum keeps the statistics current; ANALYZE here counts this transaction's rows.
    """
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _fill_ours(count: int, payload: str) -> None:
    """One real send, then copies of its row (the same signal, receiver and payload shape)."""
    with connection.cursor() as cursor:
        if payload == "model":
            cursor.execute(
                "INSERT INTO benchapp_item (name, quantity) "
                "SELECT 'item ' || g, g FROM generate_series(1, %s) g",
                [count],
            )
            obj = Item.objects.order_by("pk").first()
            work1.send(sender=Item, item=obj)
            # Each copy refers to its own row: the worker re-fetches a batch of distinct rows.
            pk_expr = "jsonb_set(payload, '{kwargs,item,pk}', to_jsonb(i.id))"
            source = f"benchapp_item i WHERE i.id <> {obj.pk} AND"
        else:
            work1.send(sender=Item, item_id=1)
            pk_expr = "payload"
            source = f"generate_series(2, {int(count)}) g WHERE"
        cursor.execute("SELECT id FROM outbox_event ORDER BY id DESC LIMIT 1")
        (first,) = cursor.fetchone()
        columns = (
            "signal, receiver, payload, status, attempts, max_attempts, available_at, worker, "
            "created_at, last_error, last_traceback"
        )
        cursor.execute(
            f"INSERT INTO outbox_event ({columns}) SELECT signal, receiver, {pk_expr}, status, attempts, "
            f"max_attempts, available_at, worker, created_at, last_error, last_traceback "
            f"FROM outbox_event e, {source} e.id = %s",
            [first],
        )


def _fill_q2(count: int) -> None:
    """async_task's own packaging, stored as its ORM broker's enqueue stores it, in bulk."""
    from django.utils import timezone
    from django_q.brokers.orm import ORM
    from django_q.models import OrmQ
    from django_q.tasks import async_task

    class Collect(ORM):
        packages: list[str] = []

        def enqueue(self, task: str) -> str:
            self.packages.append(task)
            return ""

    broker = Collect(list_key="bench")
    from django_q.conf import Conf

    broker.list_key = Conf.CLUSTER_NAME
    for i in range(count):
        async_task("bench.benchapp.jobs.q2_noop", i, broker=broker)
    now = timezone.now()
    OrmQ.objects.bulk_create(
        [OrmQ(key=broker.list_key, payload=p, lock=now) for p in broker.packages], batch_size=5000
    )


def _fill_tasksdb(count: int) -> None:
    """One real enqueue, then copies of its row with fresh ids."""
    from bench.benchapp.tasks import django_noop

    result = django_noop.enqueue(1)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'django_tasks_database_dbtaskresult'"
        )
        columns = [c for (c,) in cursor.fetchall() if c != "id"]
        table = "django_tasks_database_dbtaskresult"
        if not columns:
            table = "django_tasks_db_dbtaskresult"
            cursor.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [table]
            )
            columns = [c for (c,) in cursor.fetchall() if c != "id"]
        names = ", ".join(columns)
        cursor.execute(
            f"INSERT INTO {table} (id, {names}) SELECT gen_random_uuid(), {names} FROM {table} t, "
            f"generate_series(2, %s) g WHERE t.id = %s",
            [count, result.db_result.id],
        )


def _fill_pgqueuer(count: int, wait: bool) -> None:
    """pgqueuer's own batch enqueue, in one transaction on its own connection (it does not
    share Django's), committed on the go from stdin like the others."""
    import asyncio

    import psycopg
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    async def go() -> None:
        conn = await psycopg.AsyncConnection.connect(os.environ["PGQ_DSN"], autocommit=True)
        queries = Queries(PsycopgDriver(conn))
        async with conn.transaction():
            for start in range(0, count, 10000):
                n = min(10000, count - start)
                await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
            await conn.execute("ANALYZE")  # as _analyze() does for the others
            if wait:
                sys.stdin.readline()
        await conn.close()

    asyncio.run(go())


# --- latency ---------------------------------------------------------------------------


def latency(system: str, count: int, rate: float, port: int) -> dict[str, Any]:
    """Send ``count`` pings at ``rate``/s, each in its own transaction; time commit to start."""
    send = _handoffs()[system][1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.2)
    started: dict[int, float] = {}

    def collect() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(100)
            except TimeoutError:
                continue
            n, at = data.split()
            started.setdefault(int(n), float(at))

    stop = threading.Event()
    thread = threading.Thread(target=collect, daemon=True)
    thread.start()

    def one(n: int) -> float:
        with transaction.atomic():
            Item(name="ping", quantity=n).save()
            send(n)
        return time.time()

    # Warm up until the worker answers, so its start-up is not measured.
    deadline = time.time() + 90
    n = -1
    while not any(k < 0 for k in started) and time.time() < deadline:
        one(n)
        n -= 1
        time.sleep(0.5)
    if not any(k < 0 for k in started):
        return {"error": "no worker answered within 90 s"}
    time.sleep(1.0)
    committed: dict[int, float] = {}
    interval = 1.0 / rate
    begin = time.time()
    for i in range(count):
        target = begin + i * interval
        pause = target - time.time()
        if pause > 0:
            time.sleep(pause)
        committed[i] = one(i)
    deadline = time.time() + 30
    while len([k for k in started if k >= 0]) < count and time.time() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join()
    latencies = sorted((started[i] - committed[i]) * 1000 for i in committed if i in started)
    return {"latencies_ms": latencies, "sent": count, "missing": count - len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["write", "fill", "latency"])
    parser.add_argument("system")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--count", type=int, default=50000)
    parser.add_argument("--payload", default="primitive")
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.action == "write":
        result = write(args.system, args.seconds)
    elif args.action == "fill":
        result = fill(args.system, args.count, args.payload, args.wait)
    else:
        result = latency(args.system, args.count, args.rate, args.port)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
