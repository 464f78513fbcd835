"""The state of an outbox, as ``manage.py outbox_status`` reports it to people and monitors.

Every query here is meant to stay cheap on a table of many millions of rows, which
means not counting ``done`` events unless asked:

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
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import connections
from django.db.models import Count, Q

from . import queries
from .models import Event
from .readable import earliest

__all__ = [
    "DEAD_ROWS_WARNING",
    "HORIZON_WARNING_SECONDS",
    "RATE_WINDOWS",
    "Report",
    "Thresholds",
    "attention",
    "collect",
    "table_attention",
]

S = Event.Status
#: Minutes over which the rate of done events is reported.
RATE_WINDOWS = (1, 5, 15)


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
    queryset: Any, by_status: dict[str, int | None], *groups: tuple[str, dict[str, dict[str, int]]]
) -> None:
    """Add the counts of one GROUP BY (status and each group's column) to the tallies."""
    columns = [column for column, _ in groups]
    rows = queryset.order_by().values("status", *columns).annotate(n=Count("pk"))
    for row in rows:
        status, n = row["status"], row["n"]
        by_status[status] = (by_status[status] or 0) + n
        for column, tally in groups:
            counts = tally.setdefault(row[column], {})
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
    active = events.filter(status__in=[S.PENDING, S.RUNNING])
    due = active.filter(available_at__lte=now)
    # '-infinity' (PostgreSQL) is read as text, not as a DataError that stops the report.
    oldest, oldest_text = earliest(due, "available_at")
    if oldest_text:
        # Due before year 1: count its wait from there, a lag beyond any threshold.
        oldest = datetime.datetime.min.replace(tzinfo=now.tzinfo)

    by_status: dict[str, int | None] = dict.fromkeys(S.values, 0)
    by_receiver: dict[str, dict[str, int]] = {}
    by_queue: dict[str, dict[str, int]] = {}
    groups = (("receiver", by_receiver), ("queue", by_queue))
    if count_done:
        # Counting every row: one sequential scan is the cheapest way there is.
        _counts(events, by_status, *groups)
    else:
        by_status[S.DONE] = None
        _counts(active, by_status, *groups)
        # One query per status: ``status = %s`` lets SQLite use the partial index too.
        for status in (S.FAILED, S.DISCARDED):
            _counts(events.filter(status=status), by_status, *groups)
    # Through outbox_event_key: its own condition spelled out, which SQLite matches term by term.
    keyed = events.filter(ordering_key__isnull=False, status__in=[S.PENDING, S.RUNNING, S.FAILED])
    blocked_keys = keyed.filter(status=S.FAILED).values("receiver", "ordering_key").distinct().count()
    # Parked events are the last range of outbox_event_due (spelled as its condition, for SQLite).
    blocked_events = active.filter(available_at__gte=queries.parked()).count()

    windows = {
        f"m{minutes}": Count("pk", filter=Q(finished_at__gte=now - datetime.timedelta(minutes=minutes)))
        for minutes in RATE_WINDOWS
    }
    since = now - datetime.timedelta(minutes=max(RATE_WINDOWS))
    done = events.filter(status=S.DONE, finished_at__gte=since).aggregate(**windows)

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
        overdue=active.filter(status=S.RUNNING, worker__endswith=queries.OVERDUE_MARK).count(),
    )
    if thresholds:
        report.problems = _problems(report, thresholds)
    return report


def _problems(report: Report, limits: Thresholds) -> list[str]:
    problems = []
    if limits.max_lag is not None and report.lag_seconds > limits.max_lag:
        problems.append(f"lag {report.lag_seconds:.1f}s is over --max-lag {limits.max_lag:g}s")
    failed = report.by_status[S.FAILED] or 0
    if limits.max_failed is not None and failed > limits.max_failed:
        problems.append(f"{failed} failed events is over --max-failed {limits.max_failed}")
    if limits.max_due is not None and report.due > limits.max_due:
        problems.append(f"{report.due} due events is over --max-due {limits.max_due}")
    return problems
