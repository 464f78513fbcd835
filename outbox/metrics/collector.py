"""The table's gauges, read at scrape time with bounded queries.

A scrape must stay cheap however large the table and its backlog grow, so no query here
counts more than :data:`COUNT_LIMIT` rows, and each reads a range of a partial index:

- backlog due now and running (per queue and receiver): the first :data:`COUNT_LIMIT` rows
  of ``outbox_event_due`` in its (available_at, id) order, grouped. Due rows come first in
  that order, running rows (their lease ahead) next, so both are exact while the backlog is
  under the limit, and past it the backlog reads as the limit (a lower bound);
- oldest due age (per queue): one entry of ``outbox_event_queue_due`` per queue;
- failed (per queue and receiver): the first :data:`COUNT_LIMIT` rows of the
  ``status = 'failed'`` range of ``outbox_event_finished``.

Queues and receivers registered in this process are reported at 0 when they have no rows,
so that a dashboard shows a flat line, not a gap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from django.db import connections
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import queries
from ..models import Event
from ..readable import earliest
from ..registry import registry

__all__ = ["COUNT_LIMIT", "DatabaseCollector"]

#: The most rows one scrape counts per query.
COUNT_LIMIT = 100_000

# Served by outbox_event_due: its condition spelled as in the index (SQLite matches it term
# by term), read in the index's order and cut at the limit before grouping.
_ACTIVE = (
    "SELECT queue, receiver, status, due, COUNT(*) FROM ("
    "SELECT queue, receiver, status, CASE WHEN available_at <= %s THEN 1 ELSE 0 END AS due "
    "FROM {table} WHERE status IN ('pending', 'running') ORDER BY available_at, id LIMIT %s"
    ") head GROUP BY queue, receiver, status, due"
)
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
        with connection.cursor() as cursor:
            cursor.execute(
                _ACTIVE.format(table=table),
                [connection.ops.adapt_datetimefield_value(now), COUNT_LIMIT],
            )
            for queue, receiver, status, is_due, n in cursor.fetchall():
                key = (queue, receiver)
                due.setdefault(key, 0)
                running.setdefault(key, 0)
                failed.setdefault(key, 0)
                # An expired lease (its worker died) is due again: claimable, not running.
                if is_due:
                    due[key] += n
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
        waiting = {queue for (queue, _), n in due.items() if n}
        for queue in sorted(waiting | {queue for queue, _ in known}):
            ages.add_metric([queue], self._oldest_age(queue, now) if queue in waiting else 0.0)
        yield ages

    def _oldest_age(self, queue: str, now: Any) -> float:
        # One entry of outbox_event_queue_due.
        rows = Event.objects.using(self.alias).filter(
            queue=queue, status__in=["pending", "running"], available_at__lte=now
        )
        oldest, text = earliest(rows, "available_at")
        if text:  # before year 1 ('-infinity'): older than anything
            return math.inf
        return 0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0)


def _gauge(name: str, documentation: str, values: dict[tuple[str, str], int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["queue", "receiver"])
    for (queue, receiver), n in sorted(values.items()):
        gauge.add_metric([queue, receiver], n)
    return gauge
