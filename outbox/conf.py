"""Settings for django-signal-outbox: one accessor, every default in one place.

Users configure the app with one ``OUTBOX`` dict in their Django settings. The dict is
looked up once and again whenever Django's ``setting_changed`` signal names it, so
``override_settings(OUTBOX={...})`` and pytest-django's ``settings`` fixture work in tests.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from .limits import setting_problem

__all__ = ["DEFAULTS", "settings"]

#: Every setting and its default. docs/settings.md documents each one (tests/test_docs.py checks).
DEFAULTS: dict[str, Any] = {
    # How many times a deferred receiver is tried before its event is marked failed.
    "MAX_ATTEMPTS": 8,
    # Retry delay: BACKOFF_BASE_SECONDS * 2 ** (attempt - 1), capped, with jitter.
    "BACKOFF_BASE_SECONDS": 2.0,
    "BACKOFF_MAX_SECONDS": 3600.0,
    # The longest wait a receiver may ask for with ``raise outbox.RetryAfter(seconds)``;
    # a longer request is clamped to it, with a warning.
    "RETRY_AFTER_MAX_SECONDS": 86400.0,
    # How long a claimed event stays reserved for one worker before any worker may
    # take it again. A running worker extends it every LEASE_SECONDS / 3.
    "LEASE_SECONDS": 60.0,
    # Seconds between polls; LISTEN/NOTIFY wakes a PostgreSQL worker sooner.
    "POLL_INTERVAL": 1.0,
    # Events claimed in one statement.
    "BATCH_SIZE": 100,
    # PostgreSQL: the worker's own bookkeeping (claim, complete, release, lease extension)
    # commits with synchronous_commit off, so it does not wait for a WAL flush. A server
    # crash may then forget the last fraction of a second of it: those events run again.
    # Never applies to the sender's INSERT, nor to anything a receiver writes.
    "WORKER_ASYNC_COMMIT": True,
    # PostgreSQL: a worker runs ANALYZE on the events table when its planner statistics are
    # stale (more rows changed since the last ANALYZE than they count, and at least 10,000),
    # so that the claim keeps its ordered walk of the due index (outbox.planner_statistics).
    "WORKER_ANALYZE": True,
    # PostgreSQL, receivers run one after another: while a batch of quick receivers runs,
    # the worker claims the next batch from a second connection, so that the claim's wait
    # for the database overlaps the receivers' run (outbox.worker).
    "WORKER_CLAIM_AHEAD": True,
    # Receivers one worker runs at once: sync ones in that many threads, async ones as
    # tasks on one event loop. 1 runs them one after another (run_outbox --concurrency).
    "CONCURRENCY": 1,
    # Database alias for signals that carry no ``using`` argument; None means "default".
    "DATABASE": None,
    # Largest encoded payload accepted at send time, in bytes.
    "MAX_PAYLOAD_BYTES": 1024 * 1024,
    # Dotted path of the dispatcher class; None runs receivers in the worker process.
    "DISPATCHER": None,
    # Relay dispatchers (OUTBOX["DISPATCHER"] = "outbox.dispatch.django_q2"): the lease of
    # an event handed to the task queue. It must cover the wait in the queue: a relayed
    # event nobody has taken when it expires is relayed again (the first copy then finds
    # it gone and skips it), and that counts as an attempt.
    "RELAY_LEASE_SECONDS": 600.0,
    # Events per relayed task: each task takes its events over in one statement and
    # marks them done in one. 1 gives the finest spread over the cluster's workers.
    "RELAY_TASK_SIZE": 10,
    # The relay stops handing over while the broker queue holds this many tasks, so the
    # queue never holds more than RELAY_LEASE_SECONDS can cover.
    "RELAY_QUEUE_LIMIT": 200,
    # PostgreSQL channel the send path NOTIFYs and the worker LISTENs on.
    "NOTIFY_CHANNEL": "outbox",
    # The metrics view (outbox.metrics.views.metrics) serves staff users, and also a
    # request that sends "Authorization: Bearer <METRICS_TOKEN>" when this is set...
    "METRICS_TOKEN": None,
    # ...or that comes from one of these addresses or networks ("10.0.0.0/8", "::1").
    "METRICS_ALLOWED_IPS": (),
    # Automatic pruning by the worker: done events that finished longer ago than this
    # (seconds, or a timedelta) are deleted. None (the default) keeps them until
    # ``manage.py outbox_prune`` deletes them.
    "PRUNE_AFTER": None,
    # A worker prunes at most once per PRUNE_INTERVAL seconds, between batches.
    "PRUNE_INTERVAL": 300.0,
    # Rows deleted per statement (and so per transaction) when pruning.
    "PRUNE_BATCH_SIZE": 1000,
    # Seconds the admin dashboard's figures stay in Django's default cache (per database,
    # window and queue) before a page view computes them again.
    "DASHBOARD_CACHE_SECONDS": 10,
}


class Settings:
    """Attribute access to the ``OUTBOX`` setting, falling back to :data:`DEFAULTS`.

    Each value is checked (``outbox.limits``) when it is first read, so a value
    ``manage.py check`` reports also fails clearly where it is used: before a send writes
    anything, or before a worker starts, rather than deep in a query or a wait.
    """

    def __init__(self) -> None:
        # Cached: the send path reads settings on every signal (profiled with bench/).
        self._values: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            pass
        if name not in DEFAULTS:
            raise AttributeError(f"outbox has no setting {name!r}")
        user = getattr(django_settings, "OUTBOX", None) or {}
        if not isinstance(user, dict):
            raise ImproperlyConfigured(f"the OUTBOX setting must be a dict, not {user!r} (outbox.E004)")
        value = user.get(name, DEFAULTS[name])
        problem = setting_problem(name, value)
        if problem is not None:
            raise ImproperlyConfigured(f"{problem.msg} {problem.hint} ({problem.id})")
        self._values[name] = value
        return value

    def reload(self, **kwargs: Any) -> None:
        """Forget the cached values; connected to ``setting_changed``."""
        if kwargs.get("setting", "OUTBOX") == "OUTBOX":
            self._values = {}

    @property
    def database(self) -> str:
        """The alias used when a signal names no database."""
        return self.DATABASE or "default"

    @property
    def metrics_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """``METRICS_ALLOWED_IPS`` as networks (a single address is a network of one)."""
        return [ipaddress.ip_network(value, strict=False) for value in self.METRICS_ALLOWED_IPS]

    @property
    def prune_after(self) -> datetime.timedelta | None:
        """``PRUNE_AFTER`` as a timedelta, or None when automatic pruning is off."""
        value = self.PRUNE_AFTER
        if value is None or isinstance(value, datetime.timedelta):
            return value
        return datetime.timedelta(seconds=value)


settings = Settings()
setting_changed.connect(settings.reload, weak=False, dispatch_uid="outbox.conf.reload")
