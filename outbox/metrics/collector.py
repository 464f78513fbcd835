"""The table's gauges, read at scrape time with bounded queries.

A scrape must stay cheap however large the table and its backlog grow, so no query here
counts more than :data:`COUNT_LIMIT` rows, and each reads a range of a partial index:

- backlog due now and running (per queue and receiver): the first :data:`COUNT_LIMIT` rows
  of ``outbox_event_due`` in its (available_at, id) order, grouped. Due rows come first in
  that order, running rows (their lease ahead) next, so both are exact while the backlog is
  under the limit, and past it the backlog reads as the limit (a lower bound);
- oldest due age (per queue): the earliest due time among those rows (they are read in
  due-time order, so it is exact whatever the limit);
- failed (per queue and receiver): the first :data:`COUNT_LIMIT` rows of the
  ``status = 'failed'`` range of ``outbox_event_finished``.

Queues and receivers registered in this process are reported at 0 when they have no rows,
so that a dashboard shows a flat line, not a gap.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

from django.conf import settings as django_settings
from django.db import connections
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import queries
from ..models import Event
from ..registry import registry

__all__ = ["COUNT_LIMIT", "DatabaseCollector"]

#: The most rows one scrape counts per query.
COUNT_LIMIT = 10_000

# Served by outbox_event_due: its condition spelled as in the index (SQLite matches it term
# by term), read in the index's order and cut at the limit before grouping.
_ACTIVE = (
    "SELECT queue, receiver, status, due, COUNT(*), {earliest} FROM ("
    "SELECT queue, receiver, status, available_at, CASE WHEN available_at <= %s THEN 1 ELSE 0 END AS due "
    "FROM {table} WHERE status IN ('pending', 'running') ORDER BY available_at, id LIMIT %s"
    ") head GROUP BY queue, receiver, status, due"
)
# The earliest time of a group. PostgreSQL's '-infinity' (a replay may write it) is read as
# the start of year 1, which Python can hold: still older than anything.
_EARLIEST = "MIN(available_at)"
_EARLIEST_POSTGRESQL = "GREATEST(MIN(available_at), '0001-01-01 00:00:00+00'::timestamptz)"
# Served by outbox_event_finished (status, finished_at, id): the failed range alone.
_FAILED = (
    "SELECT queue, receiver, COUNT(*) FROM ("
    "SELECT queue, receiver FROM {table} WHERE status = 'failed' ORDER BY finished_at, id LIMIT %s"
    ") head GROUP BY queue, receiver"
)


class DatabaseCollector(Collector):
    """Gauges of the outbox on database ``alias``, read when collected."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the four gauges (see the module docstring)."""
        connection = connections[self.alias]
        table = connection.ops.quote_name(Event._meta.db_table)
        now = queries.database_now(self.alias)
        known = {(spec.queue, spec.path) for spec in registry.receivers.values()}
        due = dict.fromkeys(known, 0)
        running = dict.fromkeys(known, 0)
        failed = dict.fromkeys(known, 0)
        oldest: dict[str, datetime.datetime] = {}
        earliest = _EARLIEST_POSTGRESQL if connection.vendor == "postgresql" else _EARLIEST
        with connection.cursor() as cursor:
            cursor.execute(
                _ACTIVE.format(table=table, earliest=earliest),
                [connection.ops.adapt_datetimefield_value(now), COUNT_LIMIT],
            )
            for queue, receiver, status, is_due, n, first in cursor.fetchall():
                key = (queue, receiver)
                due.setdefault(key, 0)
                running.setdefault(key, 0)
                failed.setdefault(key, 0)
                # An expired lease (its worker died) is due again: claimable, not running.
                if is_due:
                    due[key] += n
                    first = _datetime(first)
                    if queue not in oldest or first < oldest[queue]:
                        oldest[queue] = first
                elif status == "running":
                    running[key] += n
            cursor.execute(_FAILED.format(table=table), [COUNT_LIMIT])
            for queue, receiver, n in cursor.fetchall():
                failed[(queue, receiver)] = n
                due.setdefault((queue, receiver), 0)
                running.setdefault((queue, receiver), 0)
        yield _gauge("outbox_backlog_due", "Events due now, waiting for a worker.", due)
        yield _gauge("outbox_running", "Events a worker holds, running or about to.", running)
        yield _gauge("outbox_failed", "Events failed for good, waiting for a replay.", failed)
        ages = GaugeMetricFamily(
            "outbox_oldest_due_age_seconds",
            "Seconds the oldest due event of each queue has waited past its due time.",
            labels=["queue"],
        )
        for queue in sorted(set(oldest) | {queue for queue, _ in known}):
            age = (now - oldest[queue]).total_seconds() if queue in oldest else 0.0
            ages.add_metric([queue], max(age, 0.0))
        yield ages


def _datetime(value: Any) -> datetime.datetime:
    """A time as raw SQL returns it (SQLite: the stored text), comparable with "now"."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if django_settings.USE_TZ and timezone.is_naive(value):
        value = timezone.make_aware(value, datetime.timezone.utc)
    return value


def _gauge(name: str, documentation: str, values: dict[tuple[str, str], int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["queue", "receiver"])
    for (queue, receiver), n in sorted(values.items()):
        gauge.add_metric([queue, receiver], n)
    return gauge
