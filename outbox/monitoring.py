"""What an operator sees of an outbox: ``manage.py outbox_status``'s report and the admin's counts.

Every query here is meant to stay cheap on a table of many millions of rows, which
means not counting ``done`` events unless asked (the selections are
:class:`~outbox.models.EventQuerySet`'s, each spelled as its partial index's condition):

- lag (the age of the oldest due event) reads one entry of the partial index
  ``outbox_event_due``; the due count and the pending/running counts read only that
  index's rows (pending and running events, few in a healthy outbox);
- failed and discarded counts read their range of the partial index
  ``outbox_event_finished``, as does the rate (done events whose ``finished_at`` is in the
  last 15 minutes: cost proportional to the events done in that window);
- counting ``done`` events too (``count_done=True``) is one ``GROUP BY`` over the whole
  table, a sequential scan: about half a second per million rows on a small machine, so
  it is opt-in. Pruning keeps it small.
- the overdue count (receivers past their timeout, still running in a worker thread) reads
  running rows only, through the same index;
- on PostgreSQL, the table's size and vacuum state come from the statistics views.

The admin shows every count on every page view, so an exact ``COUNT(*)`` of millions of
events would take longer than the rest of the page. On PostgreSQL a count the planner
expects to exceed :data:`ESTIMATE_ABOVE` rows is answered with the planner's estimate
instead (from ``pg_class.reltuples`` and the column statistics that autovacuum keeps, see
migration 0002), marked as estimated. Small counts, and every count on other databases,
are exact.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from django.core.paginator import Paginator
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from django.utils.functional import cached_property

from . import queries
from .models import Event, EventQuerySet
from .readable import earliest

__all__ = [
    "DEAD_ROWS_WARNING",
    "ESTIMATE_ABOVE",
    "HORIZON_WARNING_SECONDS",
    "RATE_WINDOWS",
    "EstimatedCountPaginator",
    "Report",
    "Summary",
    "Thresholds",
    "attention",
    "collect",
    "count",
    "summary",
    "table_attention",
]

#: Minutes over which the rate of done events is reported.
RATE_WINDOWS = (1, 5, 15)
#: Counts the planner expects to be larger than this are estimated on PostgreSQL.
ESTIMATE_ABOVE = 10_000


# --- manage.py outbox_status ----------------------------------------------------------------


@dataclass
class Thresholds:
    """Limits beyond which the outbox is unhealthy; None means "not checked"."""

    max_lag: float | None = None
    max_failed: int | None = None
    max_due: int | None = None


@dataclass
class Report:
    """One snapshot of an outbox. ``problems`` lists each threshold passed."""

    database: str
    vendor: str
    now: datetime.datetime
    #: Seconds the oldest due event has waited past its due time (0 when none is due);
    #: from the start of year 1 for an event due at a time before it (``-infinity``).
    lag_seconds: float
    #: A string when Python cannot hold the time: the database's text (``-infinity``).
    oldest_due_at: datetime.datetime | str | None
    due: int
    #: Events by status; ``done`` is None unless counted.
    by_status: dict[str, int | None]
    #: {receiver: {status: count}} for the statuses counted.
    by_receiver: dict[str, dict[str, int]]
    #: {queue: {status: count}} for the statuses counted.
    by_queue: dict[str, dict[str, int]]
    #: Ordering keys held up by a ``failed`` event (one per receiver and key), and the
    #: events parked behind them, to run once it is replayed or discarded.
    blocked_keys: int
    #: {minutes: events done in the last that many minutes}.
    done_in_last_minutes: dict[int, int]
    blocked_events: int = 0
    #: PostgreSQL only: size and vacuum state of the table.
    table: dict[str, Any] | None = None
    #: Running events whose sync receiver is past its timeout and still runs in a worker
    #: thread (failed, held until the thread returns: see outbox.concurrent).
    overdue: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def rates(self) -> dict[int, float]:
        """Done events per second over each window."""
        return {minutes: n / (minutes * 60) for minutes, n in self.done_in_last_minutes.items()}

    def as_json(self) -> dict[str, Any]:
        """A dict of JSON types: times as ISO 8601 strings, window keys as strings."""
        data = asdict(self)
        data["healthy"] = not self.problems
        data["attention"] = attention(self.table)
        data["done_in_last_minutes"] = {str(k): v for k, v in self.done_in_last_minutes.items()}
        data["rate_per_second"] = {str(k): round(v, 3) for k, v in self.rates.items()}
        data["lag_seconds"] = round(self.lag_seconds, 3)

        def iso(value: Any) -> Any:
            if isinstance(value, datetime.datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: iso(v) for k, v in value.items()}
            return value

        return {key: iso(value) for key, value in data.items()}


def _counts(
    queryset: EventQuerySet, by_status: dict[str, int | None], *groups: tuple[str, dict[str, dict[str, int]]]
) -> None:
    """Add the counts of one GROUP BY (status and each group's column) to the tallies."""
    columns = [column for column, _ in groups]
    for (status, *values), n in queryset.count_by("status", *columns).items():
        by_status[status] = (by_status[status] or 0) + n
        for value, (_, tally) in zip(values, groups, strict=True):
            counts = tally.setdefault(value, {})
            counts[status] = counts.get(status, 0) + n


#: Dead row versions in the table beyond which (and beyond its live rows) the worker warns:
#: every claim steps over their entries in the due index until VACUUM removes them.
DEAD_ROWS_WARNING = 100_000
#: Seconds a transaction may hold the xmin horizon back before the worker warns: while it
#: does, VACUUM cannot remove the dead row versions of any event finished since it began.
HORIZON_WARNING_SECONDS = 300.0

# The session whose snapshot holds the xmin horizon of this table back furthest: what keeps
# VACUUM from removing its dead rows. For a table, PostgreSQL (14+) counts the sessions of
# its own database and the WAL senders (a replica's hot_standby_feedback), not the other
# databases' sessions. Sessions of other roles show their query only to roles with
# pg_read_all_stats. (Replication slots and prepared transactions hold it too: not shown.)
_HORIZON = (
    "SELECT pid, datname, state, age(backend_xmin), "
    "EXTRACT(EPOCH FROM statement_timestamp() - xact_start)::float8, left(query, 200) "
    "FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid() "
    "AND (datname = current_database() OR backend_type = 'walsender') "
    "ORDER BY age(backend_xmin) DESC LIMIT 1"
)


def _table_stats(database: str) -> dict[str, Any] | None:
    connection = connections[database]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n_live_tup, n_dead_tup, last_vacuum, last_autovacuum, last_autoanalyze, "
            "pg_total_relation_size(relid), current_setting('autovacuum') = 'on' "
            "FROM pg_stat_user_tables WHERE relid = %s::regclass",
            [Event._meta.db_table],
        )
        row = cursor.fetchone()
        cursor.execute(_HORIZON)
        holder = cursor.fetchone()
    if row is None:
        return None
    keys = (
        "live_rows",
        "dead_rows",
        "last_vacuum",
        "last_autovacuum",
        "last_autoanalyze",
        "size_bytes",
        # The server-wide switch: when off, nothing vacuums the table but a manual VACUUM.
        "autovacuum_on",
    )
    stats = dict(zip(keys, row, strict=True))
    horizon_keys = ("pid", "database", "state", "xmin_age", "transaction_seconds", "query")
    stats["horizon"] = None if holder is None else dict(zip(horizon_keys, holder, strict=True))
    return stats


def attention(table: dict[str, Any] | None) -> list[str]:
    """What in the table's state (:func:`_table_stats`, PostgreSQL) slows every claim: many
    dead row versions, and a transaction keeping VACUUM from removing them."""
    if not table:
        return []
    notes = []
    dead, live = table["dead_rows"] or 0, table["live_rows"] or 0
    if dead > DEAD_ROWS_WARNING and dead > live:
        notes.append(
            f"outbox_event holds {dead:,} dead row versions ({live:,} live): every claim steps over "
            f"their index entries until VACUUM removes them"
            + ("" if table["autovacuum_on"] else " (autovacuum is OFF on this server)")
        )
    holder = table.get("horizon")
    if holder and (holder["transaction_seconds"] or 0) > HORIZON_WARNING_SECONDS:
        notes.append(
            f"a transaction open for {holder['transaction_seconds']:,.0f}s (pid {holder['pid']}, database "
            f"{holder['database']!r}, {holder['state']}) holds the xmin horizon back by "
            f"{holder['xmin_age']:,} transactions: VACUUM cannot remove the rows finished since it began"
        )
    return notes


def table_attention(database: str) -> list[str]:
    """:func:`attention` for ``database`` now (one round trip on PostgreSQL; [] elsewhere)."""
    return attention(_table_stats(database))


def collect(database: str, *, thresholds: Thresholds | None = None, count_done: bool = False) -> Report:
    """Read the state of the outbox on ``database`` and test it against ``thresholds``."""
    # The clock that wrote available_at and finished_at: a skewed machine reports true lag.
    now = queries.database_now(database)
    events = Event.objects.using(database)
    due = events.due(now)
    # '-infinity' (PostgreSQL) is read as text, not as a DataError that stops the report.
    oldest, oldest_text = earliest(due, "available_at")
    if oldest_text:
        # Due before year 1: count its wait from there, a lag beyond any threshold.
        oldest = datetime.datetime.min.replace(tzinfo=now.tzinfo)

    by_status: dict[str, int | None] = dict.fromkeys(Event.Status.values, 0)
    by_receiver: dict[str, dict[str, int]] = {}
    by_queue: dict[str, dict[str, int]] = {}
    groups = (("receiver", by_receiver), ("queue", by_queue))
    if count_done:
        # Counting every row: one sequential scan is the cheapest way there is.
        _counts(events, by_status, *groups)
    else:
        by_status[Event.Status.DONE] = None
        _counts(events.unfinished(), by_status, *groups)
        # One query per status: ``status = %s`` lets SQLite use the partial index too.
        _counts(events.failed(), by_status, *groups)
        _counts(events.discarded(), by_status, *groups)
    # Through outbox_event_key: its own condition spelled out, which SQLite matches term by term.
    blocked_keys = events.keyed().failed().values("receiver", "ordering_key").distinct().count()
    # Parked events are the last range of outbox_event_due (spelled as its condition, for SQLite).
    blocked_events = events.parked().count()

    windows = {
        f"m{minutes}": Count("pk", filter=Q(finished_at__gte=now - datetime.timedelta(minutes=minutes)))
        for minutes in RATE_WINDOWS
    }
    since = now - datetime.timedelta(minutes=max(RATE_WINDOWS))
    done = events.filter(status=Event.Status.DONE, finished_at__gte=since).aggregate(**windows)

    report = Report(
        database=database,
        vendor=connections[database].vendor,
        now=now,
        lag_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        oldest_due_at=oldest_text or oldest,
        due=due.count(),
        by_status=by_status,
        by_receiver=dict(sorted(by_receiver.items())),
        by_queue=dict(sorted(by_queue.items())),
        blocked_keys=blocked_keys,
        blocked_events=blocked_events,
        done_in_last_minutes={minutes: done[f"m{minutes}"] for minutes in RATE_WINDOWS},
        table=_table_stats(database),
        overdue=events.overdue().count(),
    )
    if thresholds:
        report.problems = _problems(report, thresholds)
    return report


def _problems(report: Report, limits: Thresholds) -> list[str]:
    problems = []
    if limits.max_lag is not None and report.lag_seconds > limits.max_lag:
        problems.append(f"lag {report.lag_seconds:.1f}s is over --max-lag {limits.max_lag:g}s")
    failed = report.by_status[Event.Status.FAILED] or 0
    if limits.max_failed is not None and failed > limits.max_failed:
        problems.append(f"{failed} failed events is over --max-failed {limits.max_failed}")
    if limits.max_due is not None and report.due > limits.max_due:
        problems.append(f"{report.due} due events is over --max-due {limits.max_due}")
    return problems


# --- the admin's counts ----------------------------------------------------------------------


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


def summary(queryset: EventQuerySet | None = None) -> Summary:
    """Counts per status and the oldest due event, in a constant number of queries.

    Pending and running events are counted exactly, through the partial index
    ``outbox_event_due``; finished ones (done, failed, discarded) by :func:`count`, through
    ``outbox_event_finished``, so a million done events are estimated, not scanned.
    """
    events = (Event.objects.all() if queryset is None else queryset).order_by()
    result = Summary(counts=dict.fromkeys(Event.Status.values, 0))
    result.counts.update(events.unfinished().count_by_status())
    for status in (Event.Status.FAILED, Event.Status.DONE, Event.Status.DISCARDED):
        n, estimated = count(events.with_status(status))
        result.counts[status] = n
        if estimated:
            result.estimated.add(status)
    # Due: what a worker would claim now, by the clock it claims with (the database's on
    # PostgreSQL). Served by outbox_event_due in (available_at, id) order. Read so that
    # '-infinity' (PostgreSQL) is text, not a DataError that breaks the page.
    result.now = queries.database_now(events.db)
    result.oldest_due, result.oldest_due_text = earliest(events.due(result.now), "available_at")
    return result
