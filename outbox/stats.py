"""Counts an operator looks at, cheap enough for every admin page view on a big table.

An exact ``COUNT(*)`` reads every matching row: on millions of events that takes longer
than the rest of the page. On PostgreSQL a count the planner expects to exceed
:data:`ESTIMATE_ABOVE` rows is answered with the planner's estimate instead (from
``pg_class.reltuples`` and the column statistics that autovacuum keeps, see migration
0002), marked as estimated. Small counts, and every count on other databases, are exact.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any, cast

from django.core.paginator import Paginator
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Count, QuerySet
from django.utils import timezone
from django.utils.functional import cached_property

from . import queries
from .models import Event
from .readable import earliest

__all__ = ["ESTIMATE_ABOVE", "EstimatedCountPaginator", "Summary", "count", "summary"]

#: Counts the planner expects to be larger than this are estimated on PostgreSQL.
ESTIMATE_ABOVE = 10_000

S = Event.Status


def count(queryset: QuerySet[Any]) -> tuple[int, bool]:
    """Return ``(n, estimated)``: the planner's estimate if large on PostgreSQL, else exact."""
    queryset = queryset.order_by()
    connection = connections[queryset.db]
    if connection.vendor == "postgresql":
        estimate = _planner_rows(connection, queryset)
        if estimate > ESTIMATE_ABOVE:
            return estimate, True
    return queryset.count(), False


class EstimatedCountPaginator(Paginator):
    """The admin's paginator: counts with :func:`count`, so estimated on PostgreSQL when large."""

    estimated = False

    @cached_property
    def count(self) -> int:
        n, self.estimated = count(cast("QuerySet[Any]", self.object_list))  # the admin's querysets
        return n


def _planner_rows(connection: BaseDatabaseWrapper, queryset: QuerySet[Any]) -> int:
    # With no filter the planner scales pg_class.reltuples to the table's current size;
    # with filters it applies the columns' statistics. Planning reads no rows.
    sql, params = queryset.values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


@dataclass
class Summary:
    """Events per status (``estimated`` names the approximate ones) and the backlog's age."""

    counts: dict[str, int] = field(default_factory=dict)
    estimated: set[str] = field(default_factory=set)
    oldest_due: datetime.datetime | None = None
    #: The database's text of the oldest due time when Python cannot hold it (``-infinity``).
    oldest_due_text: str = ""

    #: When the summary was read, by the clock of due times (the database's on PostgreSQL).
    now: datetime.datetime | None = None

    @property
    def oldest_due_age(self) -> datetime.timedelta | None:
        """How long the longest-waiting due event has been waiting."""
        if self.oldest_due is None:
            return None
        return max((self.now or timezone.now()) - self.oldest_due, datetime.timedelta())


def summary(queryset: QuerySet[Event] | None = None) -> Summary:
    """Counts per status and the oldest due event, in a constant number of queries.

    Pending and running events are counted exactly, through the partial index
    ``outbox_event_due``; finished ones (done, failed, discarded) by :func:`count`, through
    ``outbox_event_finished``, so a million done events are estimated, not scanned.
    """
    events = (Event.objects.all() if queryset is None else queryset).order_by()
    result = Summary(counts=dict.fromkeys(S.values, 0))
    active = events.filter(status__in=[S.PENDING, S.RUNNING]).values("status").annotate(n=Count("pk"))
    for row in active:
        result.counts[row["status"]] = row["n"]
    for status in (S.FAILED, S.DONE, S.DISCARDED):
        n, estimated = count(events.filter(status=status))
        result.counts[status] = n
        if estimated:
            result.estimated.add(status)
    # Due: what a worker would claim now, by the clock it claims with (the database's on
    # PostgreSQL). Served by outbox_event_due in (available_at, id) order. Read so that
    # '-infinity' (PostgreSQL) is text, not a DataError that breaks the page.
    result.now = queries.database_now(events.db)
    due = events.filter(status__in=[S.PENDING, S.RUNNING], available_at__lte=result.now)
    result.oldest_due, result.oldest_due_text = earliest(due, "available_at")
    return result
