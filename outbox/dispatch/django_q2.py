"""Relay to django-q2: ``run_outbox`` hands committed events to a django-q2 cluster.

Enable with ``OUTBOX["DISPATCHER"] = "outbox.dispatch.django_q2"`` (``pip install
"django-signal-outbox[q2]"``, ``"django_q"`` in ``INSTALLED_APPS``). The worker claims a
batch as always, under ``RELAY_LEASE_SECONDS``; :class:`Dispatcher` enqueues one task per
``RELAY_TASK_SIZE`` events and returns, leaving the rows ``running`` under that lease.

A task carries a database alias, the claim token and event ids, nothing else: no
receiver path, no payload, nothing the cluster would import or call on the task's word.
:func:`run_relayed` takes the rows over as its own :class:`outbox.claims.Claim`, runs only
receivers registered in its process through :func:`outbox.execution.run_claimed` (so
retries, backoff, ``failed`` and tracebacks are recorded exactly as in-process) under the
same :class:`outbox.heartbeat.Heartbeat` as the worker's, and marks them done fenced on its
own token.

The outbox stays the source of truth: a task the cluster lost (a worker SIGKILLed, the
broker flushed) leaves its rows leased, and the relay claims and relays them again once
the lease expires. The copy that arrives late, or twice, finds its token gone and runs
nothing (see :func:`outbox.queries.take`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
import time
from typing import Any

from django.apps import apps
from django.conf import settings as django_settings
from django.core.checks import Error
from django.utils import timezone

from .. import claims
from ..claims import Claim
from ..conf import settings
from ..exceptions import DispatchError
from ..execution import run_claimed
from ..heartbeat import Heartbeat
from ..worker import reconnect_pause

__all__ = ["TASK", "Dispatcher", "run_relayed"]

logger = logging.getLogger("outbox")

#: The one function a relayed task names.
TASK = "outbox.dispatch.django_q2.run_relayed"
_TOKEN = re.compile(r"[0-9a-f]{32}")


class Dispatcher:
    """Hands claimed batches to the django-q2 broker configured in ``Q_CLUSTER``."""

    def __init__(self) -> None:
        self._broker: Any = None
        self._failures = 0
        self.stopping = False

    def stop(self) -> None:
        """Stop waiting for room in the queue (the worker is stopping)."""
        self.stopping = True

    @property
    def lease_seconds(self) -> float:
        """The lease the worker claims with: it must cover the wait in the queue."""
        return settings.RELAY_LEASE_SECONDS

    def check(self) -> list[Error]:
        """outbox.E006: django-q2 missing, or not in INSTALLED_APPS (its ORM tables)."""
        hint = None
        if importlib.util.find_spec("django_q") is None:
            problem = "django-q2 is not installed"
            hint = 'pip install "django-signal-outbox[q2]", then add "django_q" to INSTALLED_APPS.'
        elif not apps.is_installed("django_q"):
            problem = "'django_q' is not in INSTALLED_APPS"
            hint = 'Add "django_q" to INSTALLED_APPS, run "manage.py migrate" and configure Q_CLUSTER.'
        if hint is None:
            return []
        return [
            Error(
                f'OUTBOX["DISPATCHER"] relays events to django-q2, but {problem}.',
                hint=hint,
                id="outbox.E006",
            )
        ]

    def dispatch(self, claim: Claim) -> int:
        """Enqueue the batch as tasks of ``RELAY_TASK_SIZE`` events, and return how many
        were handed over; wait while the queue is full."""
        from django_q.brokers import get_broker
        from django_q.tasks import async_task

        # The rows are the tasks' from now on, under the relay's lease: this process
        # neither writes nor extends them (unless handing them over fails).
        claim.hand_over()
        ids = [row.id for row in claim.rows]
        size = settings.RELAY_TASK_SIZE
        try:
            if self._broker is None:
                self._broker = get_broker()
            collector = _Collector(self._broker)
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
                options = {"broker": collector, "save": False, "task_name": f"outbox {chunk[0]}+{len(chunk)}"}
                async_task(TASK, claim.database, claim.token, chunk, q_options=options)
            _push(self._broker, collector.packs)
        except Exception as exc:  # noqa: BLE001 - each broker raises its own errors; all mean "not handed over"
            self._failures += 1
            self._broker = None
            pause = reconnect_pause(self._failures)
            logger.warning(
                "could not hand %d events to django-q2 (%s: %s); released, retrying in %.1fs",
                len(ids),
                type(exc).__name__,
                exc,
                pause,
            )
            # Tasks already pushed find their rows released and run nothing.
            claim.release(ids)
            self._sleep(pause)
            return 0
        self._failures = 0
        logger.debug("relayed %d events as %d tasks", len(ids), len(collector.packs))
        limit = settings.RELAY_QUEUE_LIMIT
        while not self.stopping and _queued(self._broker) >= limit:
            time.sleep(0.05)
        return len(ids)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))


class _Collector:
    """Stands in for the broker in ``async_task``: keeps each signed package, so that one
    call pushes a whole batch (django-q2 builds and signs the packages as usual)."""

    def __init__(self, broker: Any) -> None:
        self.list_key = broker.list_key
        self.packs: list[str] = []

    def enqueue(self, pack: str) -> None:
        self.packs.append(pack)


def _push(broker: Any, packs: list[str]) -> None:
    """Put packages on the broker: one command on Redis, one INSERT on the ORM broker."""
    if not packs:
        return
    from django_q.brokers.orm import ORM
    from django_q.conf import Conf
    from django_q.models import OrmQ

    if isinstance(broker, ORM):
        # ORM.enqueue() is one INSERT per task and closes the relay's connections first.
        now = timezone.now()
        key = broker.list_key or Conf.CLUSTER_NAME
        OrmQ.objects.using(Conf.ORM).bulk_create([OrmQ(key=key, payload=p, lock=now) for p in packs])
        return
    if _is_redis(broker):
        broker.connection.rpush(broker.list_key, *packs)
        return
    for pack in packs:
        broker.enqueue(pack)


def _is_redis(broker: Any) -> bool:
    try:
        from django_q.brokers.redis_broker import Redis
    except ImportError:
        return False
    return isinstance(broker, Redis)


def _queued(broker: Any) -> int:
    """Tasks waiting in the broker (not yet taken by a cluster)."""
    from django_q.brokers.orm import ORM
    from django_q.conf import Conf
    from django_q.models import OrmQ

    if isinstance(broker, ORM):
        return OrmQ.objects.using(Conf.ORM).filter(key=broker.list_key, lock__lte=timezone.now()).count()
    return broker.queue_size() or 0


def run_relayed(database: str, token: str, ids: list[int]) -> int:
    """The django-q2 task: run the relayed events still held by ``token``; return how
    many succeeded. Failures are recorded on their rows, not raised to django-q2."""
    if (
        not isinstance(database, str)
        or database not in django_settings.DATABASES
        or not isinstance(token, str)
        or not _TOKEN.fullmatch(token)
        or not isinstance(ids, list)
        or not all(type(i) is int for i in ids)
    ):
        raise DispatchError(f"malformed relayed task: {database!r}, {token!r}, {ids!r}")
    worker = f"{socket.gethostname()}:{os.getpid()} django-q2"
    claim = claims.take(database, token, ids, settings.LEASE_SECONDS, worker)
    if len(claim) < len(ids):
        logger.info(
            "%d of %d relayed events were already taken, finished or relayed again: skipped",
            len(ids) - len(claim),
            len(ids),
        )
    if not claim.rows:
        return 0
    # The worker's heartbeat, for this task's rows: it hands the unstarted ones back to
    # the relay if a receiver runs long, so that other tasks run them meanwhile.
    heartbeat = Heartbeat(database, settings.LEASE_SECONDS, name="outbox-relay-heartbeat")
    heartbeat.hold(claim)
    heartbeat.start()
    try:
        run_claimed(claim)
    finally:
        heartbeat.stop()
        claim.finish()
    return claim.succeeded
