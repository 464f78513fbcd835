"""Every SQL statement that writes, claims, completes, reschedules or deletes event rows.

Raw SQL, because these run once per send inside the user's transaction and once per
batch in the worker's hot loop, where the ORM's per-object cost shows. Statements are
written for PostgreSQL and SQLite; MySQL and MariaDB take branches of their own where the
SQL differs (see "MySQL and MariaDB" below: no ``UPDATE ... RETURNING``, no partial
indexes, no advisory transaction locks, ``signal`` a reserved word).

Times come from the database's clock on PostgreSQL: every lease, due time and timestamp
these statements write or compare is ``statement_timestamp()`` (plus a number of seconds),
so a worker or web server whose clock is wrong neither takes a lease that is still live nor
delays the events it sends. ``statement_timestamp()``, not ``now()``: it is the statement's
start even inside a transaction, and it is stable within the statement, so the due-time
comparison still uses the index. On MySQL and MariaDB (with ``USE_TZ``) it is
``UTC_TIMESTAMP(6)``, also fixed for the statement. On SQLite, which runs on the process's
machine, times come from the process's clock (``timezone.now()``).

Each statement is one constant, written whole, with the index that serves it; the table's
name and the status values in it are the model's (see "the statements' names" below).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings as django_settings
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import wakeup
from .conf import settings

# What other modules import, and only that.
__all__ = [
    "ASYNC_COMMIT_POSTGRESQL",
    "CLAIM_POSTGRESQL",
    "COMPLETE_POSTGRESQL",
    "OVERDUE_MARK",
    "PARKED",
    "PIN_PLAN_POSTGRESQL",
    "PRUNABLE",
    "TABLE",
    "Claimed",
    "NewEvent",
    "Position",
    "claim",
    "claim_after",
    "complete",
    "database_now",
    "delete_finished",
    "extend_lease",
    "insert_event",
    "insert_events",
    "mark_overdue",
    "parked",
    "put_back",
    "record_failure",
    "release",
    "run_alone",
    "take",
    "unpark",
]

# --- the statements' names for the table and its statuses ------------------------------
#
# Every statement below is written whole, as one constant per statement and database.
# The table is ``{table}`` and each status ``'{pending}'``, ``'{running}'``, ...: filled in
# from the model (Event._meta.db_table, Event.Status) by _sql(), once per statement, on
# first use, since this module is imported before the app registry is ready. Any other
# ``{name}`` is a part that varies from one call to the next, filled in by the caller.


class _Names(dict[str, str]):
    """The model's names, leaving the placeholders of the caller's parts as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


@functools.cache
def _names() -> _Names:
    """``table`` and each status value (``pending``, ...), as the model has them."""
    from .models import Event

    return _Names(
        table=Event._meta.db_table, **{status.name.lower(): status.value for status in Event.Status}
    )


@functools.cache
def _sql(statement: str) -> str:
    """``statement`` with the model's table name and status values filled in."""
    return statement.format_map(_names())


if TYPE_CHECKING:  # built on first use, by __getattr__()
    #: The events' table (Event._meta.db_table).
    TABLE: str
    #: The claim of every queue on PostgreSQL; parameters: token, lease (seconds), worker,
    #: limit. The benchmark's raw psycopg floor runs it as it is: committed synchronously,
    #: no completion carried, from the start of the due index.
    CLAIM_POSTGRESQL: str
    #: Completion on PostgreSQL; parameters: ids, seconds since each started, seconds since
    #: each returned, token (see complete()).
    COMPLETE_POSTGRESQL: str
    #: Statuses that pruning may delete: never pending or running, whose work is not done.
    PRUNABLE: tuple[str, ...]


def __getattr__(name: str) -> Any:
    # The statements and values other modules import that need the model (see above).
    if name == "TABLE":
        return _names()["table"]
    if name == "CLAIM_POSTGRESQL":
        return _claim_postgresql(False, False, "")
    if name == "COMPLETE_POSTGRESQL":
        return _sql(_COMPLETE_POSTGRESQL)
    if name == "PRUNABLE":
        return _prunable()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- sending ---------------------------------------------------------------------------

# Coalescing (connect(dedupe_key=...)): a row whose receiver and dedupe key are already
# held by a fresh row (pending, never claimed) is not written, and the statement goes on;
# no unique violation reaches the sender's transaction. The conflict target is the partial
# unique index outbox_event_dedupe; its WHERE is spelled exactly as the index's (SQLite
# matches a partial index's predicate term by term, in order).
#
# Why "never claimed" (batch_attempt IS NULL) and not only "pending": rows return to
# pending after a claim (a retry, record_failure; a hand-back, release; a replay), and a
# newer fresh row of their key may have been written meanwhile. Were those rows still
# covered, the worker's UPDATE would raise a unique violation. Every claim sets
# batch_attempt, and nothing sets it back to NULL (replay sets it false), so a row leaves
# the index for good when a worker first takes it: a new send then writes a new row.
#
# Between concurrent senders on PostgreSQL (READ COMMITTED), the second INSERT of a key
# finds the first's uncommitted index entry and waits for that transaction: if it
# commits, DO NOTHING; if it rolls back, the row is written. Never both, never an error.
# (Under REPEATABLE READ or SERIALIZABLE, PostgreSQL raises a serialization failure
# instead of waiting it out, as it does for any write conflict at those levels.)
DEDUPE_CONFLICT = (
    " ON CONFLICT (receiver, dedupe_key) "
    "WHERE batch_attempt IS NULL AND dedupe_key IS NOT NULL AND status = '{pending}' DO NOTHING"
)

#: The ``available_at`` of a parked event: pending behind a ``failed`` event of its key, so
#: never due until unpark() (after that event is replayed, discarded or pruned). It keeps
#: such events out of the claim's index range, however many pile up behind a broken key.
PARKED = datetime.datetime(9999, 1, 1, tzinfo=datetime.timezone.utc)


def parked() -> datetime.datetime:
    """:data:`PARKED` as this project's datetimes are: naive when ``USE_TZ`` is False."""
    return PARKED if django_settings.USE_TZ else PARKED.replace(tzinfo=None)


_PG_PARKED = "'9999-01-01 00:00:00+00'::timestamptz"

# A keyed event's available_at as written: parked at once if its key is blocked already.
# Served by outbox_event_key (status = 'failed' implies its condition).
_PARK_IF_BLOCKED = (
    "CASE WHEN EXISTS (SELECT 1 FROM {table} WHERE receiver = {receiver} AND ordering_key = {key} "
    "AND status = '{failed}') THEN {parked} ELSE {now} END"
)

# The INSERT off PostgreSQL and MySQL (SQLite), times the process's: one row of
# _ROW_SQLITE per event (``available``: a parameter, or _PARK_IF_BLOCKED for a keyed
# one), ``trace_column`` and ``traced`` naming the trace context when there is one,
# ``conflict`` DEDUPE_CONFLICT when a row has a dedupe key.
_INSERT_SQLITE = (
    "INSERT INTO {table} (signal, receiver, payload, status, attempts, max_attempts, available_at, "
    "worker, created_at, last_error, last_traceback, queue, ordering_key, dedupe_key{trace_column}) "
    "VALUES {rows}{conflict}"
)
# Parameters: signal, receiver, payload, max_attempts, available_at's, created_at, queue,
# ordering_key, dedupe_key (and trace_context).
_ROW_SQLITE = "(%s, %s, %s, '{pending}', 0, %s, {available}, '', %s, '', '', %s, %s, %s{traced})"


class NewEvent(NamedTuple):
    """One row :func:`insert_events` writes: a receiver and how it is routed."""

    receiver: str
    max_attempts: int
    queue: str = "default"
    ordering_key: str | None = None
    #: Seconds from now (by the clock of due times) to its first attempt; None or 0: now.
    delay: float | None = None
    #: Not written while a fresh row of its receiver holds this key (DEDUPE_CONFLICT).
    dedupe_key: str | None = None


# --- claiming --------------------------------------------------------------------------

# "Now" in SQL on PostgreSQL: the database's clock (see the module docstring).
_PG_NOW = "statement_timestamp()"

# The claim, for PostgreSQL and for SQLite. The claim of every queue on PostgreSQL is
# what the benchmark's raw psycopg floor runs (CLAIM_POSTGRESQL).
#
# A pending row's attempt is counted here, for the whole batch: no per-row write while it
# runs. A running row is an orphan, reclaimed after its worker died: the claim does not
# count it (SET reads the row as it was), and gives back the attempt its batch claim
# counted (batch_attempt), since that death may have been any row's. Orphans are run
# alone (execution.run_claimed), which counts the attempt of the one in hand.
#
# Due means pending or running with available_at passed (for a running row, its lease).
# queue, ordering_key and created_at are returned for outbox.current_event(): read from
# the row the UPDATE has in hand anyway, so they cost no lookup.
#
# Per-key ordering: a keyed event is claimable only at the head of its key, when no
# earlier event (lower id) of its receiver and key is unfinished: pending (a retry waiting
# its backoff, or not yet claimed), running, or failed (blocked until replayed or
# discarded). One index probe per keyed candidate, served by outbox_event_key: the
# "ordering_key IS NULL OR NOT EXISTS (...)" of each claim.
#
# Why two workers claiming at the same instant never both take events of one key (on
# PostgreSQL, READ COMMITTED): say e1 < e2 share a key, both due. Each claim runs the test
# against its statement's snapshot, in which e1 is pending (a claim in flight has not
# committed its "running"), so e2 fails it in every concurrent claim; e1 is taken by at most
# one of them (FOR UPDATE SKIP LOCKED: the other skips it). Later claims see e1 running,
# then failed or pending again (a retry), all blocking, until a snapshot sees it done or
# discarded, after its receiver returned. A stale snapshot only errs towards "still
# blocked". And since a batch's snapshot sees e1 unfinished, one batch takes at most one
# event of a key. What the snapshot cannot see is an event not committed yet: that is why
# senders of keyed events take a per-key advisory lock (_ORDERED_INSERT), so that ids of
# one key are handed out in commit order. On SQLite one writer at a time does the same.
#
# The probe must read one entry of outbox_event_key whatever the statistics say. A plain
# NOT EXISTS (... AND earlier.id < candidate.id) lets the planners guess otherwise when one
# key holds most keyed rows (a broken key's backlog): PostgreSQL then expects a sequential
# scan, or SQLite a walk of the primary key, to find a match at once, and pays a scan of
# the table for each candidate whose key has none. So on PostgreSQL the probe reads the
# entry just before the candidate's own in the index (a row comparison on its three
# columns, descending, LIMIT 1: an order only that index yields without a sort) and asks
# whether it is of the same receiver and key; SQLite is told the index (INDEXED BY, an
# error rather than a scan if it ever cannot use it).
#
# On PostgreSQL the parts that vary are ``finish`` (_FINISH_POSTGRESQL or ""), ``after``
# (_AFTER_POSTGRESQL or "") and ``bookkeeping`` (ASYNC_COMMIT_POSTGRESQL or ""); the claims
# return, last, where each row stood in the index when claimed (due_at, its available_at
# then): claim_after() takes its next position from it. Served by outbox_event_due.
_CLAIM_POSTGRESQL = (
    "WITH {finish}due AS MATERIALIZED (SELECT id AS due_id, available_at AS due_at FROM {table} "
    "WHERE status IN ('{pending}', '{running}') AND available_at <= statement_timestamp(){after} "
    "AND (ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM (SELECT earlier.receiver AS prior_receiver, "
    "earlier.ordering_key AS prior_key FROM {table} AS earlier "
    "WHERE (earlier.receiver, earlier.ordering_key, earlier.id) "
    "< ({table}.receiver, {table}.ordering_key, {table}.id) "
    "AND earlier.ordering_key IS NOT NULL AND earlier.status IN ('{pending}', '{running}', '{failed}') "
    "ORDER BY earlier.receiver DESC, earlier.ordering_key DESC, earlier.id DESC LIMIT 1) AS prior "
    "WHERE prior_receiver = {table}.receiver AND prior_key = {table}.ordering_key)) "
    "ORDER BY available_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
    "UPDATE {table} SET status = '{running}', "
    "attempts = CASE WHEN status = '{pending}' THEN attempts + 1 WHEN batch_attempt THEN attempts - 1 "
    "ELSE attempts END, "
    "batch_attempt = (status = '{pending}'), "
    "available_at = statement_timestamp() + %(lease)s * interval '1 second', lease_token = %(token)s, "
    "worker = %(worker)s "
    "FROM due WHERE id = due_id{bookkeeping} "
    "RETURNING id, signal, receiver, payload, attempts, max_attempts, NOT batch_attempt, "
    "queue, ordering_key, {created_us}, trace_context, {due_us}"
)
# Named queues (parameter ``queues``, a list, too). Served by outbox_event_queue_due, one
# ordered range per queue: each queue gives its first ``limit`` due rows (locked), the
# earliest ``limit`` of those are claimed, the rest unlocked when the statement ends.
_CLAIM_QUEUES_POSTGRESQL = (
    "WITH {finish}due AS MATERIALIZED (SELECT due_id, due_at FROM unnest(%(queues)s::text[]) AS chosen(name) "
    "CROSS JOIN LATERAL (SELECT id AS due_id, available_at AS due_at FROM {table} "
    "WHERE queue = chosen.name AND status IN ('{pending}', '{running}') "
    "AND available_at <= statement_timestamp() "
    "AND (ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM (SELECT earlier.receiver AS prior_receiver, "
    "earlier.ordering_key AS prior_key FROM {table} AS earlier "
    "WHERE (earlier.receiver, earlier.ordering_key, earlier.id) "
    "< ({table}.receiver, {table}.ordering_key, {table}.id) "
    "AND earlier.ordering_key IS NOT NULL AND earlier.status IN ('{pending}', '{running}', '{failed}') "
    "ORDER BY earlier.receiver DESC, earlier.ordering_key DESC, earlier.id DESC LIMIT 1) AS prior "
    "WHERE prior_receiver = {table}.receiver AND prior_key = {table}.ordering_key)) "
    "ORDER BY available_at, id LIMIT %(limit)s "
    "FOR UPDATE SKIP LOCKED) AS one "
    "ORDER BY due_at, due_id LIMIT %(limit)s) "
    "UPDATE {table} SET status = '{running}', "
    "attempts = CASE WHEN status = '{pending}' THEN attempts + 1 WHEN batch_attempt THEN attempts - 1 "
    "ELSE attempts END, "
    "batch_attempt = (status = '{pending}'), "
    "available_at = statement_timestamp() + %(lease)s * interval '1 second', lease_token = %(token)s, "
    "worker = %(worker)s "
    "FROM due WHERE id = due_id{bookkeeping} "
    "RETURNING id, signal, receiver, payload, attempts, max_attempts, NOT batch_attempt, "
    "queue, ordering_key, {created_us}, trace_context, {due_us}"
)
# PostgreSQL: the worker's bookkeeping committed without waiting for the WAL flush
# (OUTBOX["WORKER_ASYNC_COMMIT"]). set_config(..., true) is SET LOCAL as an expression, so
# it travels inside the statement: no extra round trip. As an uncorrelated subquery it is
# an InitPlan, run once per statement, not once per row. It is appended only to a statement
# that is its own transaction (autocommit, outside atomic(): see _bookkeeping()); inside a
# caller's transaction it would change how the caller's own writes commit.
ASYNC_COMMIT_POSTGRESQL = " AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL"

# The completion of the previous batch, carried by the claim of the next one (one round
# trip for both; see claim()'s ``done``): a data-modifying CTE, run to its end whatever the
# rest of the statement does, fenced on that batch's token. Its rows are running under a
# live lease, so the claim below does not see them as due; were a lease to have expired,
# a row is either written done here or reclaimed below (a row updated by one part of a
# statement is skipped by the other), never both. The same as _COMPLETE_POSTGRESQL.
_FINISH_POSTGRESQL = (
    "finished AS (UPDATE {table} SET status = '{done}', "
    "started_at = statement_timestamp() - ran.since_start * interval '1 second', "
    "finished_at = statement_timestamp() - coalesce(ran.since_end, 0) * interval '1 second', "
    "lease_token = NULL "
    "FROM unnest(%(done)s::bigint[], %(done_since_start)s::float8[], %(done_since_end)s::float8[]) "
    "AS ran(id, since_start, since_end) "
    "WHERE {table}.id = ran.id AND {table}.lease_token = %(done_token)s), "
)
# A walk of outbox_event_due that starts at a position, (available_at, id), rather than at
# its first entry (parameters after_at, after_id): see claim_after(). The row comparison is
# the start of the index range, so the dead entries before it are never read.
_AFTER_POSTGRESQL = (
    " AND (available_at, id) >= (timestamptz 'epoch' + %(after_at)s * interval '1 microsecond', %(after_id)s)"
)

# The claim's plan, pinned, whatever the statistics say: an ordered walk of the due index
# stopped by the LIMIT, and the batch's rows found by primary key (a nested loop over at
# most ``limit`` rows). The planner's alternatives, a bitmap or sequential scan and a sort of
# every due entry, or a hash join over the whole table, cost about the same on paper when it
# believes the table small (stale statistics), and read every dead entry and every due row
# on each claim behind a backlog or a held xmin horizon (BENCHMARKS.md, "Bloat"). So the
# claim runs with sorts, bitmap and sequential scans, hash and merge joins disabled, which
# leaves those plans only where nothing else can do (the named-queues claim's sort of the
# queues' first rows), and without JIT compilation, which the disabled plans' costs would
# otherwise set off (tens of milliseconds). set_config(..., true) is SET LOCAL; sent before
# the claim in one simple-protocol message, which PostgreSQL runs as one implicit
# transaction, so it holds for the claim and ends with it: no extra round trip, nothing left
# on the session for the receivers' own queries. Only for a claim that is its own
# transaction (in a caller's atomic block SET LOCAL would outlive the claim) sent by a
# client-side binding cursor (a server-side bound one sends one statement a message; see
# _claim_cursor()).
PIN_PLAN_POSTGRESQL = {
    "enable_sort": "off",
    "enable_bitmapscan": "off",
    "enable_seqscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
    "jit": "off",
}
_PIN_PLAN_POSTGRESQL = (
    "SELECT "
    + ", ".join(f"set_config('{name}', '{value}', true)" for name, value in PIN_PLAN_POSTGRESQL.items())
    + "; "
)


def _claim_postgresql(queues: bool, finish: bool, bookkeeping: str, after: bool = False) -> str:
    """The PostgreSQL claim: of every queue or of named ones (parameter ``queues``), with
    or without the previous batch's completion (parameters ``done``, ``done_token``),
    committed asynchronously or not (``bookkeeping``: ASYNC_COMMIT_POSTGRESQL or ""),
    from the start of the due index or, every queue only, from a position (``after``)."""
    key = (queues, finish, bookkeeping, after)
    statement = _claims_postgresql.get(key)
    if statement is None:
        statement = _claims_postgresql[key] = _sql(
            _CLAIM_QUEUES_POSTGRESQL if queues else _CLAIM_POSTGRESQL
        ).format(
            finish=_sql(_FINISH_POSTGRESQL) if finish else "",
            after=_AFTER_POSTGRESQL if after else "",
            bookkeeping=bookkeeping,
            created_us=_EPOCH_US.format(column="created_at"),
            due_us=_EPOCH_US.format(column="due_at"),
        )
    return statement


_claims_postgresql: dict[tuple[bool, bool, str, bool], str] = {}

# The claim returns created_at and due_at as microseconds since the epoch (bigint), not as
# timestamptz: Django's timestamptz loader is Python code (it applies the connection's time
# zone), two values per claimed row, where psycopg loads an integer in C. Exact: extract()
# is numeric from PostgreSQL 14 (a float8 before, still exact to the microsecond for dates
# before the 2250s). claim_after() turns created_at back into a
# datetime; due_at stays an integer, the position the next claim starts from (_AFTER_POSTGRESQL
# adds it back to the epoch as an interval, also exact).
_EPOCH_US = "(extract(epoch FROM {column}) * 1000000)::bigint"
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _pg_array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal of numbers (None: NULL) for a ``%s::bigint[]`` or
    ``::float8[]`` parameter. psycopg dumps a list with its array dumper, Python code that
    dumps and quotes each element (three arrays of a batch's size with every claim that
    carries the last batch's completion), where it binds a string with its C dumper.
    ``str`` of an int or a float is a literal PostgreSQL reads back exactly (``inf`` and
    ``nan`` included)."""
    return "{" + ",".join(["NULL" if value is None else str(value) for value in values]) + "}"


def _ran_arrays(timings: Sequence[tuple[float | None, float]]) -> tuple[str, str]:
    """The completion's timings as its two float8[] parameters (see _COMPLETE_POSTGRESQL)."""
    return (
        _pg_array([None if start is None else float(start) for start, _ in timings]),
        _pg_array([float(end) for _, end in timings]),
    )


# SQLite: times are parameters (now, until: the process's clock), the head-of-key probe is
# told its index. Served by outbox_event_due.
_CLAIM_SQLITE = (
    "UPDATE {table} SET status = '{running}', "
    "attempts = CASE WHEN status = '{pending}' THEN attempts + 1 WHEN batch_attempt THEN attempts - 1 "
    "ELSE attempts END, "
    "batch_attempt = (status = '{pending}'), available_at = %(until)s, lease_token = %(token)s, "
    "worker = %(worker)s "
    "WHERE id IN (SELECT id FROM {table} "
    "WHERE status IN ('{pending}', '{running}') AND available_at <= %(now)s "
    "AND (ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM {table} AS earlier INDEXED BY outbox_event_key "
    "WHERE earlier.receiver = {table}.receiver AND earlier.ordering_key = {table}.ordering_key "
    "AND earlier.id < {table}.id AND earlier.status IN ('{pending}', '{running}', '{failed}'))) "
    "ORDER BY available_at, id LIMIT %(limit)s) "
    "RETURNING id, signal, receiver, payload, attempts, max_attempts, NOT batch_attempt, "
    "queue, ordering_key, created_at, trace_context"
)
# Named queues on SQLite: ``each`` is one _ONE_QUEUE_SQLITE per queue (parameters
# queue_0, queue_1, ...), joined by UNION ALL: each queue's earliest due rows from
# outbox_event_queue_due, the earliest of all taken.
_CLAIM_QUEUES_SQLITE = (
    "UPDATE {table} SET status = '{running}', "
    "attempts = CASE WHEN status = '{pending}' THEN attempts + 1 WHEN batch_attempt THEN attempts - 1 "
    "ELSE attempts END, "
    "batch_attempt = (status = '{pending}'), available_at = %(until)s, lease_token = %(token)s, "
    "worker = %(worker)s "
    "WHERE id IN (SELECT id FROM ({each}) ORDER BY available_at, id LIMIT %(limit)s) "
    "RETURNING id, signal, receiver, payload, attempts, max_attempts, NOT batch_attempt, "
    "queue, ordering_key, created_at, trace_context"
)
_ONE_QUEUE_SQLITE = (
    "SELECT * FROM (SELECT id, available_at FROM {table} WHERE queue = %(queue_N)s "
    "AND status IN ('{pending}', '{running}') AND available_at <= %(now)s "
    "AND (ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM {table} AS earlier INDEXED BY outbox_event_key "
    "WHERE earlier.receiver = {table}.receiver AND earlier.ordering_key = {table}.ordering_key "
    "AND earlier.id < {table}.id AND earlier.status IN ('{pending}', '{running}', '{failed}'))) "
    "ORDER BY available_at, id LIMIT %(limit)s)"
)


def _claim_sqlite_queues(count: int) -> str:
    """The claim of ``count`` named queues on SQLite (parameters queue_0, queue_1, ...)."""
    statement = _claims_sqlite.get(count)
    if statement is None:
        one = _sql(_ONE_QUEUE_SQLITE)
        each = " UNION ALL ".join(one.replace("queue_N", f"queue_{n}") for n in range(count))
        statement = _claims_sqlite[count] = _sql(_CLAIM_QUEUES_SQLITE).format(each=each)
    return statement


_claims_sqlite: dict[int, str] = {}
# started_at and finished_at are when the receiver started and returned, by the clock of
# the other timestamps: the statement's time less the seconds the worker measured since
# (its monotonic clock; successes are written in batches, after the fact). The admin
# dashboard reads them (outbox.dashboard): commit-to-start latency and receiver durations.
# Completion on PostgreSQL (COMPLETE_POSTGRESQL); parameters: ids, seconds since each
# started, seconds since each returned (float arrays in the order of ids; NULL: start
# unknown), token. Served by the primary key.
_COMPLETE_POSTGRESQL = (
    "UPDATE {table} SET status = '{done}', "
    "started_at = statement_timestamp() - ran.since_start * interval '1 second', "
    "finished_at = statement_timestamp() - coalesce(ran.since_end, 0) * interval '1 second', "
    "lease_token = NULL "
    "FROM unnest(%s::bigint[], %s::float8[], %s::float8[]) AS ran(id, since_start, since_end) "
    "WHERE {table}.id = ran.id AND {table}.lease_token = %s"
)
# Elsewhere the process's clock, as every timestamp there: one CASE per column, ``started``
# and ``finished`` holding a "WHEN %s THEN %s" (id, time) per row.
_COMPLETE_SQLITE_MYSQL = (
    "UPDATE {table} SET status = '{done}', started_at = CASE id {started} END, "
    "finished_at = CASE id {finished} END, lease_token = NULL "
    "WHERE {ids} AND lease_token = %s{bookkeeping}"
)


@dataclass
class Claimed:
    """A claimed row, as the worker needs it."""

    id: int
    signal: str
    receiver: str
    payload: Any
    attempts: int
    max_attempts: int
    #: Reclaimed after its worker died (or in hand since): run it alone (see claim()).
    alone: bool = False
    queue: str = "default"
    ordering_key: str | None = None
    created_at: datetime.datetime | None = None
    #: The sender's W3C trace context (JSON text or a dict), None if none was stored.
    trace_context: Any = None


def _claimed(connection: BaseDatabaseWrapper, rows: Sequence[Sequence[Any]]) -> list[Claimed]:
    """The rows a claim returns (see _CLAIM_POSTGRESQL), sorted by id."""
    found = [Claimed(*[*row[:6], bool(row[6]), *row[7:]]) for row in rows]
    if connection.vendor != "postgresql":
        # Raw SQL skips the ORM's converters: SQLite gives the stored text (UTC), or a
        # naive datetime where its own converter applies.
        for row in found:
            row.created_at = _read_datetime(row.created_at)
    found.sort(key=lambda row: row.id)
    return found


def _read_datetime(value: Any) -> datetime.datetime | None:
    if isinstance(value, str):
        value = parse_datetime(value)
    if isinstance(value, datetime.datetime) and django_settings.USE_TZ and timezone.is_naive(value):
        value = timezone.make_aware(value, datetime.timezone.utc)
    return value


def _adapt(connection: BaseDatabaseWrapper, value: datetime.datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _now(connection: BaseDatabaseWrapper) -> tuple[str, list[Any]]:
    """The current time as SQL and its parameters (the module docstring says whose clock)."""
    if connection.vendor == "postgresql":
        return _PG_NOW, []
    if _mysql_clock(connection):
        return _MY_NOW, []
    return "%s", [_adapt(connection, timezone.now())]


def _later(connection: BaseDatabaseWrapper, seconds: float) -> tuple[str, list[Any]]:
    """``seconds`` from now, as SQL and its parameters."""
    if connection.vendor == "postgresql":
        return f"{_PG_NOW} + %s * interval '1 second'", [float(seconds)]
    if _mysql_clock(connection):
        return _my_later(seconds), []
    return "%s", [_adapt(connection, timezone.now() + datetime.timedelta(seconds=seconds))]


def database_now(alias: str) -> datetime.datetime:
    """The time by the clock that leases and due times use: the database's on PostgreSQL
    (one query), the process's elsewhere. For the ORM queries that compare with "now"."""
    connection = connections[alias]
    if _mysql_clock(connection):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {_MY_NOW}")
            return timezone.make_aware(cursor.fetchone()[0], datetime.timezone.utc)
    if connection.vendor != "postgresql":
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_PG_NOW}")
        return cursor.fetchone()[0]


def insert_events(
    alias: str,
    signal: str,
    receivers: Sequence[NewEvent],
    payload: str,
    trace_context: str | None = None,
) -> None:
    """Write one pending event per :class:`NewEvent` (a receiver, its max_attempts, queue and
    ordering key), all with this payload, in one INSERT on ``alias``, in whatever
    transaction is open there.

    On PostgreSQL the first INSERT of a transaction also decides, in the same statement,
    whether to ``pg_notify``: at most one NOTIFY per transaction, none when no worker
    waits for one, and no extra round trip (see :mod:`outbox.wakeup`). A keyed event whose
    key is blocked by a ``failed`` event is written parked (see :data:`PARKED`); a delayed
    one is due ``delay`` seconds after the statement (its key's later events wait behind
    it, in id order); one with a dedupe key is skipped while a fresh row holds its key
    (:data:`DEDUPE_CONFLICT`).
    ``trace_context`` (JSON text, see :mod:`outbox.tracing`) is written into every row; the
    column is only named in the statement when there is one, so untraced sends are unchanged.
    No receivers: no statement.
    """
    receivers = [NewEvent(*row) for row in receivers]
    if not receivers:
        return
    connection = connections[alias]
    if connection.vendor == "mysql":
        _insert_mysql(connection, alias, signal, receivers, payload, trace_context)
        return
    conflict = _sql(DEDUPE_CONFLICT) if any(row.dedupe_key is not None for row in receivers) else ""
    if connection.vendor != "postgresql":
        now = timezone.now()
        when, park_at = _adapt(connection, now), _adapt(connection, parked())
        rows, params = [], []
        traced = "" if trace_context is None else ", %s"
        row = _sql(_ROW_SQLITE)
        for receiver, max_attempts, queue, key, delay, dedupe in receivers:
            due = _adapt(connection, now + datetime.timedelta(seconds=delay)) if delay else when
            if key is None:
                rows.append(row.format(available="%s", traced=traced))
                params += [signal, receiver, payload, max_attempts, due, when, queue, key, dedupe]
            else:
                park = _sql(_PARK_IF_BLOCKED).format(receiver="%s", key="%s", parked="%s", now="%s")
                rows.append(row.format(available=park, traced=traced))
                params += [signal, receiver, payload, max_attempts, receiver, key, park_at, due]
                params += [when, queue, key, dedupe]
            if traced:
                params.append(trace_context)
        statement = _sql(_INSERT_SQLITE).format(
            trace_column="" if trace_context is None else ", trace_context",
            rows=", ".join(rows),
            conflict=conflict,
        )
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
        return
    notify = wakeup.first_send(connection)
    with connection.cursor() as cursor:
        statement = _postgresql_insert(
            cursor.cursor.connection, signal, receivers, payload, notify, trace_context
        )
        cursor.execute(statement + conflict)
    if notify:
        wakeup.decided(connection)


def insert_event(
    alias: str,
    signal: str,
    receiver: str,
    payload: str,
    max_attempts: int,
    *,
    queue: str = "default",
    ordering_key: str | None = None,
    delay: float | None = None,
    dedupe_key: str | None = None,
) -> None:
    """Write one pending event: :func:`insert_events` for one receiver."""
    insert_events(
        alias, signal, [NewEvent(receiver, max_attempts, queue, ordering_key, delay, dedupe_key)], payload
    )


def _postgresql_insert(
    pg: Any,
    signal: str,
    receivers: Sequence[NewEvent],
    payload: str,
    notify: bool,
    trace_context: str | None = None,
) -> str:
    """The INSERT (deciding on its NOTIFY) as one statement, values written in as literals.

    This is what psycopg's client-side binding, Django's default, would send; building it
    here skips that machinery's per-call cost on the sender's hot path (measured with
    ``bench/``). The constant part of each row is built once per receiver and quoted by
    psycopg; the payload is quoted once per call. The times are the database's clock, so
    that a web server whose clock is ahead does not delay its events. Keyed events take
    their key's advisory lock first (_ORDERED_INSERT).
    """
    quoted = _quote(pg, payload)
    # JSON has braces: the rows are only ever arguments of str.format(), never its template.
    payload_value = f"{quoted}::jsonb, "
    trace_column, traced = "", ""
    if trace_context is not None:
        trace_column, traced = ", trace_context", f", {_quote(pg, trace_context)}::jsonb"
    rows: list[str] = []
    locks: set[tuple[int, int]] = set()
    for receiver, max_attempts, queue, key, delay, dedupe in receivers:
        # last_error is ''. In the first row of a transaction's first INSERT, the expression
        # that decides whether to NOTIFY (and does) computes it: cheaper than a CTE.
        last_error = wakeup.notify_expression(pg) if notify and not rows else "''"
        head = _row_head(pg, signal, receiver, int(max_attempts))
        due = f"{_PG_NOW} + {float(delay)!r} * interval '1 second'" if delay else _PG_NOW
        if key is None:
            available, key_value = due, "NULL"
        else:
            quoted_key = _quote(pg, key)
            park = _sql(_PARK_IF_BLOCKED).format(
                receiver=_literal(pg, receiver), key=quoted_key, parked=_PG_PARKED, now=due
            )
            available, key_value = park, quoted_key
            locks.add(key_lock(receiver, key))
        queue_value = _queue_literal(pg, queue)
        dedupe_value = "NULL" if dedupe is None else _quote(pg, dedupe)
        rows.append(
            f"{head}{last_error}, {payload_value}{available}, {_PG_NOW}, {queue_value}, {key_value}, "
            f"{dedupe_value}{traced})"
        )
    if not locks:
        return _insert_postgresql(trace_column) + ", ".join(rows)
    # Sorted, so two statements locking the same keys cannot deadlock each other.
    taken = ", ".join(f"pg_advisory_xact_lock({cls}, {key})" for cls, key in sorted(locks))
    return _sql(_ORDERED_INSERT).format(locks=taken, trace_column=trace_column, rows=", ".join(rows))


# The INSERT on PostgreSQL: the values of each row written in (see _postgresql_insert()),
# in this order: _row_head(), then last_error, payload, available_at, created_at, queue,
# ordering_key, dedupe_key (and trace_context: ``trace_column`` names it when there is one,
# so a send with no active span names no extra column).
_INSERT_POSTGRESQL = (
    "INSERT INTO {table} (signal, receiver, status, attempts, max_attempts, worker, last_traceback, "
    "last_error, payload, available_at, created_at, queue, ordering_key, dedupe_key{trace_column}) "
    "VALUES {rows}"
)


def _insert_postgresql(trace_column: str) -> str:
    """_INSERT_POSTGRESQL up to its rows, which end it: built once, as the send path is hot."""
    prefix = _insert_prefixes.get(trace_column)
    if prefix is None:
        prefix = _insert_prefixes[trace_column] = _sql(_INSERT_POSTGRESQL).format(
            trace_column=trace_column, rows=""
        )
    return prefix


_insert_prefixes: dict[str, str] = {}


# Keyed events are written after their keys' advisory locks are taken, held to the end of
# the sender's transaction: a second sender of the same key waits for the first to commit
# or roll back before its rows get their ids (nextval runs on the rows the join yields,
# so after the lock). Ids of one key are thus handed out in commit order, and no claim can
# see a later event of a key committed while an earlier one is still to come. The cost:
# concurrent transactions that send on one key take turns (a transaction sending keys in
# opposite orders to another can deadlock; PostgreSQL then aborts one of them).
_ORDERED_INSERT = (
    "WITH ordered AS MATERIALIZED (SELECT {locks}) "
    "INSERT INTO {table} (signal, receiver, status, attempts, max_attempts, worker, last_traceback, "
    "last_error, payload, available_at, created_at, queue, ordering_key, dedupe_key{trace_column}) "
    "SELECT queued.* FROM ordered, (VALUES {rows}) AS queued"
)
_ORDERING = 0x6F62786F  # advisory lock class id of ordering keys: "obxo"


def key_lock(receiver: str, key: str) -> tuple[int, int]:
    """The advisory lock (class id, key) a sender of ``receiver``'s ``key`` takes. Two keys
    may share one (a 32-bit hash): they then take turns, which costs time, not order."""
    return _ORDERING, zlib.crc32(f"{receiver}\x00{key}".encode()) - 2**31


def _quote(pg: Any, text: str) -> str:
    """``text`` as an SQL string literal for connection ``pg``."""
    if pg.info.parameter_status("standard_conforming_strings") == "on":
        # The SQL-standard literal, quotes doubled; backslashes are plain characters. No
        # NUL: JSON escapes control characters and keys with one are refused at send.
        return "'" + text.replace("'", "''") + "'"
    return _literal(pg, text)


_queues: dict[str, str] = {}


def _queue_literal(pg: Any, queue: str) -> str:
    literal = _queues.get(queue)
    if literal is None:
        literal = _queues[queue] = _literal(pg, queue)  # identifier-like: the same everywhere
    return literal


# A row's first values on PostgreSQL: signal, receiver, status, attempts, max_attempts,
# worker, last_traceback.
_ROW_HEAD_POSTGRESQL = "({signal}, {receiver}, '{pending}', 0, {max_attempts}, '', '', "
_row_heads: dict[tuple[str, str, int], str] = {}


def _row_head(pg: Any, signal: str, receiver: str, max_attempts: int) -> str:
    # Shared by every connection: signal and receiver names are dotted Python names,
    # whose quoted form does not depend on the connection's settings.
    key = (signal, receiver, max_attempts)
    head = _row_heads.get(key)
    if head is None:
        head = _row_heads[key] = _sql(_ROW_HEAD_POSTGRESQL).format(
            signal=_literal(pg, signal), receiver=_literal(pg, receiver), max_attempts=max_attempts
        )
    return head


def _literal(pg: Any, value: str) -> str:
    """``value`` as a quoted SQL string literal, by psycopg's rules for connection ``pg``."""
    from psycopg import sql

    return sql.Literal(value).as_string(pg)


def claim(
    alias: str,
    batch_size: int,
    lease_seconds: float,
    worker: str,
    *,
    queues: Sequence[str] | None = None,
    done: tuple[Any, ...] | None = None,
) -> tuple[str, list[Claimed]]:
    """Claim up to ``batch_size`` due events in one statement; return (token, rows).

    :func:`claim_after` from the start of the due index.

    ``done``, a (token, ids) pair or a (token, ids, timings) triple (timings as
    :func:`complete` takes them), marks the previous batch's successes done in the same
    statement on PostgreSQL (fenced on that token, as :func:`complete`), or in a
    :func:`complete` just before the claim elsewhere: one round trip per batch, not two.

    Due means pending with ``available_at`` passed, or running with an expired lease (its
    worker died: such an orphan comes back with ``alone`` set, its attempt not counted; see
    ``_CLAIM_POSTGRESQL``), and, for a keyed event, at the head of its key (ibid.).
    ``queues`` limits it to those queues (None: every queue). Served by the partial index
    ``outbox_event_due``, or ``outbox_event_queue_due`` for named queues. On PostgreSQL,
    ``SKIP LOCKED`` lets any number of workers claim at once without waiting on or sharing
    a row; on SQLite the single UPDATE holds the database write lock, which serializes
    claimers.
    """
    token, rows, _ = claim_after(alias, batch_size, lease_seconds, worker, queues=queues, done=done)
    return token, rows


#: Where a claim's earliest row stood in the due index: (its available_at in microseconds
#: since the epoch, its id).
Position = tuple[int, int]


def claim_after(
    alias: str,
    batch_size: int,
    lease_seconds: float,
    worker: str,
    *,
    queues: Sequence[str] | None = None,
    done: tuple[Any, ...] | None = None,
    after: Position | None = None,
) -> tuple[str, list[Claimed], Position | None]:
    """:func:`claim`, walking the due index from ``after`` (PostgreSQL, every queue; None:
    from its start); return (token, rows, position) where position is that of the earliest
    row claimed (PostgreSQL; else None), for the next claim to start from.

    Why: finished events leave dead entries in the due index (two each) until VACUUM
    removes them, and a transaction that holds the xmin horizon back keeps VACUUM from
    removing any. A claim from the start steps over all of them, every time (0.4 s per
    claim behind 1,000,000 finished events: ``make bench-bloat``); one from the previous
    batch's position steps over one batch's. It misses what lies before the position: rows
    another claim skipped (locked by another worker, or behind the head of their ordering
    key) and rows that became visible later with an earlier ``available_at`` (a sender's
    long transaction, an expired lease). So the caller starts from the index's start
    whenever a claim from a position comes back short of ``batch_size``, and regularly
    (:class:`outbox.Worker`): those rows wait at most that long, and are never lost.
    """
    connection = connections[alias]
    token = uuid.uuid4().hex
    params: dict[str, Any] = {"token": token, "limit": batch_size, "worker": worker}
    chosen = None if queues is None else list(dict.fromkeys(queues))
    if done is not None and len(done) == 2:  # no timings: started unknown, returned now
        done = (done[0], done[1], [(None, 0.0)] * len(done[1]))
    finish = done is not None and bool(done[1])
    if done is not None and finish and connection.vendor != "postgresql":
        complete(alias, *done)
        finish = False
    if chosen == []:
        if done is not None and finish:
            complete(alias, *done)
        return token, [], None
    if connection.vendor == "mysql":
        return token, _claim_mysql(alias, params, lease_seconds, chosen), None
    postgresql = connection.vendor == "postgresql"
    if postgresql:
        params["lease"] = float(lease_seconds)
        if chosen is not None:
            params["queues"] = chosen
            after = None
        if done is not None and finish:
            done_token, done_ids, timings = done
            params["done_token"], params["done"] = done_token, _pg_array(done_ids)
            params["done_since_start"], params["done_since_end"] = _ran_arrays(timings)
        if after is not None:
            params["after_at"], params["after_id"] = after
        sql = _claim_postgresql(chosen is not None, finish, _bookkeeping(connection), after is not None)
    else:
        now = timezone.now()
        params["until"] = _adapt(connection, now + datetime.timedelta(seconds=lease_seconds))
        params["now"] = _adapt(connection, now)
        if chosen is None:
            sql = _sql(_CLAIM_SQLITE)
        else:
            sql = _claim_sqlite_queues(len(chosen))
            params.update({f"queue_{n}": queue for n, queue in enumerate(chosen)})
    cursor, client_side = _claim_cursor(connection)
    with cursor:
        pinned = client_side and _own_transaction(connection)
        if pinned:
            sql = _PIN_PLAN_POSTGRESQL + sql
        cursor.execute(sql, params)
        if pinned:
            cursor.nextset()  # past the settings' row, to the claim's
        found = cursor.fetchall()
    position = None
    if postgresql:  # created_at and due_at in microseconds since the epoch: see _EPOCH_US
        position = min(((row[-1], row[0]) for row in found), default=None)
        found = [(*row[:9], _EPOCH + datetime.timedelta(microseconds=row[9]), row[10]) for row in found]
    return token, _claimed(connection, found), position


def _claim_cursor(connection: BaseDatabaseWrapper) -> tuple[Any, bool]:
    """Django's cursor for the claim (its checks, execute wrappers and query log), and whether
    it is a PostgreSQL one that binds client-side (psycopg's ClientCursor, Django's default,
    which merges the parameters into the statement and so lets one message carry several
    statements: see PIN_PLAN_POSTGRESQL). On PostgreSQL the cursor binds its parameters
    server-side, as Django's own ``server_side_binding`` option does: psycopg then prepares
    a statement it has run ``prepare_threshold`` times (the connection's, 5 unless OPTIONS
    say otherwise; None: never), and the server no longer plans the claim each time.
    Planning was most of a claim that finds little: 0.40 ms against 0.11 ms prepared,
    beside 2,000,000 done events (BENCHMARKS.md). Not where OPTIONS set
    ``prepare_threshold`` to None (PgBouncer before 1.21 in transaction mode), nor while
    Django logs queries (DEBUG, ``CaptureQueriesContext``), whose log shows the SQL only of
    client-side bound ones: there, and elsewhere, the cursor Django gives."""
    cursor = connection.cursor()
    if connection.vendor != "postgresql":
        return cursor, False
    import psycopg
    from django.db.backends.postgresql.base import ServerBindingCursor

    raw = cursor.cursor
    if not isinstance(raw, psycopg.ClientCursor):
        return cursor, False
    if connection.queries_logged or raw.connection.prepare_threshold is None:
        return cursor, True
    cursor.cursor = ServerBindingCursor(raw.connection)  # type: ignore[call-arg]  # stubs: no __init__
    raw.close()
    return cursor, False


# take(): a compare-and-set on the relay's ticket; ``returning`` is _TAKEN but on MySQL.
_TAKE = (
    "UPDATE {table} SET lease_token = %s, available_at = {until}, worker = %s "
    "WHERE {ids} AND lease_token = %s AND status = '{running}'{returning}"
)
_TAKEN = (
    " RETURNING id, signal, receiver, payload, attempts, max_attempts, NOT batch_attempt, "
    "queue, ordering_key, created_at, trace_context"
)


def take(
    alias: str, ticket: str, ids: Sequence[int], lease_seconds: float, worker: str
) -> tuple[str, list[Claimed]]:
    """Take over rows a relay claimed under ``ticket``: swap in a fresh token, renew the
    lease, and return (token, rows) for the rows still held by ``ticket``.

    A compare-and-set on the token, so one relayed task runs each row at most once: a
    duplicate delivery of the same task, or one that arrives after the relay reclaimed the
    row (new token) or after it finished (token cleared), gets no rows. The attempt was
    counted by the relay's claim and is not counted again. Served by the primary key.
    """
    if not ids:
        return ticket, []
    connection = connections[alias]
    token = uuid.uuid4().hex
    until, until_params = _later(connection, lease_seconds)
    test, id_params = _ids(connection, ids)
    returning = "" if connection.vendor == "mysql" else _TAKEN
    with connection.cursor() as cursor:
        cursor.execute(
            _sql(_TAKE).format(until=until, ids=test, returning=returning),
            [token, *until_params, worker, *id_params, ticket],
        )
        if returning:
            rows = _claimed(connection, cursor.fetchall())
        else:  # the fresh token names the rows taken (primary key)
            cursor.execute(_sql(_TAKEN_MYSQL).format(ids=test), [*id_params, token])
            rows = _claimed(connection, cursor.fetchall())
    return token, rows


def _ids(connection: BaseDatabaseWrapper, ids: Sequence[int]) -> tuple[str, list[Any]]:
    """An ``id`` membership test served by the primary key."""
    if connection.vendor == "postgresql":
        return "id = ANY(%s)", [list(ids)]
    return f"id IN ({', '.join(['%s'] * len(ids))})", list(ids)


def _bookkeeping(connection: BaseDatabaseWrapper) -> str:
    """ASYNC_COMMIT_POSTGRESQL for a worker's bookkeeping statement that is its own
    transaction on PostgreSQL, when OUTBOX["WORKER_ASYNC_COMMIT"] is on; else ""."""
    if connection.vendor != "postgresql" or not settings.WORKER_ASYNC_COMMIT:
        return ""
    if not _own_transaction(connection):
        return ""  # the caller's transaction: its commit is not ours to change
    return ASYNC_COMMIT_POSTGRESQL


def _own_transaction(connection: BaseDatabaseWrapper) -> bool:
    """Whether a statement sent now is its own transaction (autocommit, outside atomic())."""
    return not connection.in_atomic_block and connection.get_autocommit()


def _fenced_update(
    alias: str,
    token: str,
    ids: Sequence[int],
    statement: str,
    values: list[Any],
    bookkeeping: bool = False,
    **parts: str,
) -> int:
    """Run ``statement``, an UPDATE of the rows among ``ids`` that ``token`` still holds
    (``WHERE {ids} AND lease_token = %s{bookkeeping}``, its other ``parts`` filled in from
    the keywords, ``values`` its parameters before those); return how many it wrote.

    The fence of every write a worker makes after its claim: a row whose lease was lost
    and reclaimed by another worker carries another token and is left to that worker.
    ``bookkeeping``: the worker's own record of a batch (completion, hand-back, lease),
    committed asynchronously where :func:`_bookkeeping` says so. Served by the primary key.
    """
    if not ids:
        return 0
    connection = connections[alias]
    test, id_params = _ids(connection, ids)
    values = [_adapt(connection, v) if isinstance(v, datetime.datetime) else v for v in values]
    commit = _bookkeeping(connection) if bookkeeping else ""
    with connection.cursor() as cursor:
        cursor.execute(
            _sql(statement).format(ids=test, bookkeeping=commit, **parts), [*values, *id_params, token]
        )
        return cursor.rowcount


def complete(
    alias: str, token: str, ids: Sequence[int], timings: Sequence[tuple[float | None, float]] | None = None
) -> int:
    """Mark claimed events done in one statement, fenced on the claim token.

    ``timings``, in the order of ``ids``: (seconds since the receiver started, or None if
    unknown; seconds since it returned), from which started_at and finished_at are written.
    None: started now, unknown start. Served by the primary key."""
    if not ids:
        return 0
    timings = list(timings) if timings is not None else [(None, 0.0)] * len(ids)
    connection = connections[alias]
    if connection.vendor == "postgresql":
        since_start, since_end = _ran_arrays(timings)
        with connection.cursor() as cursor:
            cursor.execute(
                _sql(_COMPLETE_POSTGRESQL) + _bookkeeping(connection),
                [_pg_array(ids), since_start, since_end, token],
            )
            return cursor.rowcount
    now = timezone.now()
    started, finished, params_s, params_f = [], [], [], []
    for event_id, (began, ended) in zip(ids, timings, strict=True):
        started.append("WHEN %s THEN %s")
        at = None if began is None else now - datetime.timedelta(seconds=began)
        params_s += [event_id, at if at is None else _adapt(connection, at)]
        finished.append("WHEN %s THEN %s")
        params_f += [event_id, _adapt(connection, now - datetime.timedelta(seconds=ended))]
    return _fenced_update(
        alias,
        token,
        ids,
        _COMPLETE_SQLITE_MYSQL,
        [*params_s, *params_f],
        bookkeeping=True,
        started=" ".join(started),
        finished=" ".join(finished),
    )


def record_failure(
    alias: str,
    token: str,
    event_id: int,
    error: str,
    traceback: str,
    retry_in: float | None,
    ran_for: float | None = None,
) -> int:
    """Record a failed attempt: pending again ``retry_in`` seconds from now (by the clock
    of leases: see the module docstring), or ``failed`` if None. A keyed event that fails
    for good parks the events queued behind it on its key (see :data:`PARKED`).
    ``ran_for``: seconds since the attempt started (started_at; None: unknown)."""
    connection = connections[alias]
    started, started_params = ("NULL", []) if ran_for is None else _later(connection, -ran_for)
    if retry_in is None:
        status, (available, available_params) = _names()["failed"], _now(connection)
        finished, finished_params = available, available_params
    else:
        status, (available, available_params) = _names()["pending"], _later(connection, retry_in)
        finished, finished_params = "NULL", []
    with connection.cursor() as cursor:
        cursor.execute(
            _sql(_RECORD_FAILURE).format(available=available, finished=finished, started=started),
            [status, *available_params, *finished_params, *started_params, error, traceback, event_id, token],
        )
        changed = cursor.rowcount
        if changed and retry_in is None and connection.vendor == "mysql":
            _park_behind_mysql(cursor, connection, event_id)
        elif changed and retry_in is None:
            cursor.execute(_sql(_PARK_BEHIND), [_adapt(connection, parked()), event_id, event_id, event_id])
    return changed


# record_failure(): the attempt's outcome, fenced on its token (primary key).
_RECORD_FAILURE = (
    "UPDATE {table} SET status = %s, available_at = {available}, finished_at = {finished}, "
    "started_at = {started}, last_error = %s, last_traceback = %s, lease_token = NULL "
    "WHERE id = %s AND lease_token = %s"
)


# Parks the pending events of a failed event's key that come after it (none if it has no
# key): a row or two through the primary key, then outbox_event_key. A separate statement:
# if the worker dies between the two, the events are still blocked (the claim's head-of-key
# test), only scanned by claims until the next unpark() or failure parks them.
_PARK_BEHIND = (
    "UPDATE {table} SET available_at = %s WHERE status = '{pending}' "
    "AND receiver = (SELECT receiver FROM {table} WHERE id = %s) "
    "AND ordering_key = (SELECT ordering_key FROM {table} WHERE id = %s AND status = '{failed}') "
    "AND id > %s"
)
# Makes due again the parked events no failed event of their key precedes any more.
# Through outbox_event_due (the parked rows are its last range), a probe of
# outbox_event_key each.
_UNPARK = (
    "UPDATE {table} SET available_at = {now} WHERE status = '{pending}' AND available_at >= %s "
    "AND NOT EXISTS (SELECT 1 FROM {table} AS earlier WHERE earlier.receiver = {table}.receiver "
    "AND earlier.ordering_key = {table}.ordering_key AND earlier.id < {table}.id "
    "AND earlier.status = '{failed}')"
)


def unpark(alias: str) -> int:
    """Make parked events due again where no ``failed`` event of their key precedes them
    any more; return how many. Run after events are replayed, discarded or pruned; also
    safe at any time, as it only moves events whose key is unblocked."""
    connection = connections[alias]
    now, params = _now(connection)
    statement = _UNPARK_MYSQL if connection.vendor == "mysql" else _UNPARK
    with connection.cursor() as cursor:
        cursor.execute(_sql(statement).format(now=now), [*params, _adapt(connection, parked())])
        return cursor.rowcount


#: Appended to the ``worker`` column of a row whose receiver ran past its timeout in a
#: thread that still runs it (outbox.concurrent); the next claim of the row overwrites it.
OVERDUE_MARK = " [overdue]"


def mark_overdue(alias: str, token: str, event_id: int, error: str, traceback: str) -> int:
    """Record the timeout of a receiver that still runs in a thread: its error is stored and
    its row marked overdue, but it stays ``running`` and leased to ``token`` (not claimable)
    until the thread returns and :func:`record_failure` writes the attempt's outcome.
    Served by the primary key."""
    connection = connections[alias]
    # || is OR on MySQL unless sql_mode has PIPES_AS_CONCAT.
    appended = "CONCAT(worker, %s)" if connection.vendor == "mysql" else "worker || %s"
    with connection.cursor() as cursor:
        cursor.execute(
            _sql(_MARK_OVERDUE).format(appended=appended), [error, traceback, OVERDUE_MARK, event_id, token]
        )
        return cursor.rowcount


# mark_overdue(): ``appended`` is the worker column with OVERDUE_MARK added (primary key).
_MARK_OVERDUE = (
    "UPDATE {table} SET last_error = %s, last_traceback = %s, worker = {appended} "
    "WHERE id = %s AND lease_token = %s AND status = '{running}'"
)


def release(alias: str, token: str, ids: Sequence[int]) -> int:
    """Hand claimed events that were never started back, due now, their attempt undone
    (an orphan's was not counted: see claim())."""
    now, params = _now(connections[alias])
    return _fenced_update(alias, token, ids, _RELEASE, params, bookkeeping=True, now=now)


# release() and put_back(): ``available_at`` is ``{now}``, or a parameter. attempts
# first: MySQL evaluates SET assignments left to right, each seeing the last.
_RELEASE = (
    "UPDATE {table} SET attempts = CASE WHEN batch_attempt THEN attempts - 1 ELSE attempts END, "
    "status = '{pending}', available_at = {now}, lease_token = NULL, batch_attempt = false "
    "WHERE {ids} AND lease_token = %s{bookkeeping}"
)


def put_back(alias: str, token: str, event_id: int, available_at: datetime.datetime) -> int:
    """Hand a claimed event back unstarted, due at ``available_at`` again, its attempt undone.

    For :func:`outbox.testing.drain`, which runs each event at most once per call: a retry
    that fell due while it ran is claimed again, and put back as it was. Served by the
    primary key."""
    return _fenced_update(alias, token, [event_id], _RELEASE, [available_at], now="%s")


def run_alone(alias: str, token: str, event_id: int) -> int | None:
    """Mark a claimed event as the one in hand, alone, and count its attempt; return the
    attempts now counted, or None if ``token`` no longer holds it.

    Written before its receiver runs, so that if the worker dies in it the reclaim knows
    this row was in hand (``batch_attempt`` false) and keeps the attempt. Served by the
    primary key.
    """
    connection = connections[alias]
    returning = "" if connection.vendor == "mysql" else " RETURNING attempts"
    with connection.cursor() as cursor:
        cursor.execute(_sql(_RUN_ALONE).format(returning=returning), [event_id, token])
        if not returning:  # the token fences the read as it fenced the write
            if not cursor.rowcount:
                return None
            cursor.execute(_sql(_ATTEMPTS_MYSQL), [event_id, token])
        row = cursor.fetchone()
    return None if row is None else row[0]


# run_alone(): the attempt of the row in hand (primary key); MySQL reads it back after.
_RUN_ALONE = (
    "UPDATE {table} SET attempts = attempts + 1, batch_attempt = false "
    "WHERE id = %s AND lease_token = %s AND status = '{running}'{returning}"
)
_ATTEMPTS_MYSQL = "SELECT attempts FROM {table} WHERE id = %s AND lease_token = %s"


def extend_lease(alias: str, token: str, ids: Sequence[int], lease_seconds: float) -> int:
    """Push the lease of events still in hand ``lease_seconds`` into the future."""
    until, params = _later(connections[alias], lease_seconds)
    return _fenced_update(alias, token, ids, _EXTEND_LEASE, params, bookkeeping=True, until=until)


_EXTEND_LEASE = (
    "UPDATE {table} SET available_at = {until} "
    "WHERE {ids} AND lease_token = %s AND status = '{running}'{bookkeeping}"
)


def delete_finished(alias: str, ids: Sequence[int], status: str, before: datetime.datetime) -> int:
    """Delete these events if they are still ``status`` and finished before ``before``.

    Called by :mod:`outbox.pruning` with one page of ids at a time, so each DELETE is its
    own short statement (in autocommit, its own transaction). The status and age are tested
    again here, by the primary key, so a row replayed since the page was read is kept.
    """
    prunable = _prunable()
    if status not in prunable:
        raise ValueError(f"only {', '.join(prunable)} events may be deleted, not {status!r}")
    if not ids:
        return 0
    connection = connections[alias]
    test, id_params = _ids(connection, ids)
    with connection.cursor() as cursor:
        cursor.execute(
            _sql(_DELETE_FINISHED).format(ids=test), [*id_params, status, _adapt(connection, before)]
        )
        return cursor.rowcount


def _prunable() -> tuple[str, ...]:
    """PRUNABLE: the statuses of finished events, as the model has them."""
    return tuple(_names()[status] for status in ("done", "failed", "discarded"))


# delete_finished(): a page of ids by the primary key, tested again.
_DELETE_FINISHED = "DELETE FROM {table} WHERE {ids} AND status = %s AND finished_at < %s"


# --- MySQL and MariaDB ----------------------------------------------------------------
#
# What differs from the statements above, and why:
# - No partial indexes: migration 0009 adds stored generated columns that are NULL where a
#   partial index has no entry, and indexes them: due_at (outbox_event_due_my,
#   outbox_event_queue_due_my), open_key (outbox_event_key_my), dedupe_slot (the unique
#   outbox_event_dedupe_my). Keys are compared as bytes, through those VARBINARY columns.
# - No UPDATE ... RETURNING (MariaDB has it for INSERT and DELETE only), and no
#   "LIMIT & IN subquery": the claim selects ids FOR UPDATE SKIP LOCKED, updates those ids
#   and reads them back, in one short transaction of its own.
# - SET assignments are evaluated left to right, each seeing the values before it: so the
#   claim's assignments are ordered (_CLAIM_MYSQL), attempts first.
# - No advisory transaction locks: senders of ordering keys lock a row of outbox_key_lock
#   (an upsert, held to the end of their transaction) instead of pg_advisory_xact_lock.
# - `signal` is a reserved word, and || is OR: identifiers quoted, CONCAT().
# - The clock is the database's (UTC_TIMESTAMP(6)) when USE_TZ is on, as Django then stores
#   UTC; with USE_TZ off Django stores local times, so the process's clock is used.

_MY_NOW = "UTC_TIMESTAMP(6)"
# A claim's rows read back, by id or (take()) by the fresh token (primary key): ``ids``.
_CLAIMED_MYSQL = (
    "SELECT id, `signal`, receiver, payload, attempts, max_attempts, NOT batch_attempt, "
    "queue, ordering_key, created_at, trace_context FROM {table} WHERE {ids}"
)
_TAKEN_MYSQL = (
    "SELECT id, `signal`, receiver, payload, attempts, max_attempts, NOT batch_attempt, "
    "queue, ordering_key, created_at, trace_context FROM {table} WHERE {ids} AND lease_token = %s"
)


def _mysql_clock(connection: BaseDatabaseWrapper) -> bool:
    """True if times come from the MySQL/MariaDB server's clock (see above)."""
    return connection.vendor == "mysql" and django_settings.USE_TZ


def _my_later(seconds: float) -> str:
    # Whole microseconds: INTERVAL n SECOND with a fraction is not read alike everywhere.
    return f"({_MY_NOW} + INTERVAL {round(float(seconds) * 1_000_000)} MICROSECOND)"


# The ids of a claim, locked, others' locked rows skipped (parameter: the limit; ``now``:
# the database's clock or a parameter). Served by outbox_event_due_my (due_at, id): due_at
# is available_at for pending and running rows and NULL otherwise, so the range
# "due_at <= now" in (due_at, id) order holds exactly the due rows, as the partial index
# outbox_event_due does on PostgreSQL.
#
# The head-of-key test: no unfinished earlier event of the candidate's receiver and key.
# One probe of outbox_event_key_my (receiver, open_key, id) per keyed candidate; open_key
# is NULL for done and discarded rows, so they are not in the probed range. A subquery of
# a locking read is a plain consistent read (it locks nothing), as on PostgreSQL.
_CLAIM_IDS_MYSQL = (
    "SELECT id FROM {table} FORCE INDEX (outbox_event_due_my) WHERE due_at <= {now} "
    "AND (ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM {table} AS earlier "
    "FORCE INDEX (outbox_event_key_my) WHERE earlier.receiver = {table}.receiver "
    "AND earlier.open_key = CAST({table}.ordering_key AS BINARY) AND earlier.id < {table}.id)) "
    "ORDER BY due_at, id LIMIT %s FOR UPDATE SKIP LOCKED"
)
# Named queues: one ordered range of outbox_event_queue_due_my (queue, due_at, id) per
# queue, each its first ``limit`` due rows locked, the earliest ``limit`` of all taken (as
# on PostgreSQL; the others' locks go when the claim's transaction ends, at once): ``each``
# is one _ONE_QUEUE_IDS_MYSQL per queue, joined by UNION ALL.
_CLAIM_QUEUE_IDS_MYSQL = "SELECT id FROM ({each}) AS due ORDER BY due_at, id LIMIT %s"
_ONE_QUEUE_IDS_MYSQL = (
    "(SELECT id, due_at FROM {table} FORCE INDEX (outbox_event_queue_due_my) WHERE queue = %s "
    "AND due_at <= {now} "
    "AND (ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM {table} AS earlier "
    "FORCE INDEX (outbox_event_key_my) WHERE earlier.receiver = {table}.receiver "
    "AND earlier.open_key = CAST({table}.ordering_key AS BINARY) AND earlier.id < {table}.id)) "
    "ORDER BY due_at, id LIMIT %s FOR UPDATE SKIP LOCKED)"
)


def _claim_queue_ids_mysql(count: int, now: str) -> str:
    """The ids of a claim of ``count`` named queues (parameters: per queue its name, the
    ``now`` parameters and the limit; then the limit)."""
    each = " UNION ALL ".join([_sql(_ONE_QUEUE_IDS_MYSQL).format(now=now)] * count)
    return _sql(_CLAIM_QUEUE_IDS_MYSQL).format(each=each)


# The claim's ids marked running (``marks``: one %s per id). The assignments in the order
# MySQL needs: attempts reads the old status and batch_attempt, batch_attempt the old
# status; status is written after both.
_CLAIM_MYSQL = (
    "UPDATE {table} SET "
    "attempts = CASE WHEN status = '{pending}' THEN attempts + 1 WHEN batch_attempt THEN attempts - 1 "
    "ELSE attempts END, "
    "batch_attempt = (status = '{pending}'), status = '{running}', available_at = {until}, "
    "lease_token = %s, worker = %s WHERE id IN ({marks})"
)


def _claim_mysql(
    alias: str, params: dict[str, Any], lease_seconds: float, queues: list[str] | None
) -> list[Claimed]:
    """:func:`claim` on MySQL/MariaDB: lock the due ids (SKIP LOCKED), mark them running,
    read them back, in one transaction that holds its row locks only for those three
    statements. The worker's connection is in autocommit, so this is its own transaction."""
    from django.db import transaction

    connection = connections[alias]
    if _mysql_clock(connection):
        now, now_params, until = _MY_NOW, [], _my_later(lease_seconds)
    else:
        moment = timezone.now()
        now, now_params = "%s", [_adapt(connection, moment)]
        until = "%s"
        now_params_until = [_adapt(connection, moment + datetime.timedelta(seconds=lease_seconds))]
    if queues is None:
        select, select_params = _sql(_CLAIM_IDS_MYSQL).format(now=now), [*now_params, params["limit"]]
    else:
        select = _claim_queue_ids_mysql(len(queues), now)
        select_params = [value for queue in queues for value in (queue, *now_params, params["limit"])]
        select_params.append(params["limit"])
    with transaction.atomic(using=alias, savepoint=False), connection.cursor() as cursor:
        cursor.execute(select, select_params)
        ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return []
        marks = ", ".join(["%s"] * len(ids))
        set_params = [] if until != "%s" else now_params_until
        cursor.execute(
            _sql(_CLAIM_MYSQL).format(until=until, marks=marks),
            [*set_params, params["token"], params["worker"], *ids],
        )
        cursor.execute(_sql(_CLAIMED_MYSQL).format(ids=f"id IN ({marks})"), ids)
        return _claimed(connection, cursor.fetchall())


# Coalescing: a row whose (receiver, dedupe_slot) is taken by a fresh row is not written,
# and the statement goes on (ON DUPLICATE KEY UPDATE of nothing; not INSERT IGNORE, which
# would turn every other error, a too-long value say, into a warning). Between concurrent
# senders InnoDB makes the second wait on the first's uncommitted index entry, as
# PostgreSQL does: a duplicate if it commits, written if it rolls back; never an error.
_DEDUPE_MYSQL = " ON DUPLICATE KEY UPDATE id = id"
# Senders of keyed events lock their keys' rows first (sorted: two senders cannot deadlock
# in one statement), held to the end of the sender's transaction; see _ORDERED_INSERT.
_KEY_LOCK_MYSQL = "INSERT INTO outbox_key_lock (id) VALUES {rows} ON DUPLICATE KEY UPDATE id = id"
# Which of the sent keys a failed event blocks (outbox_event_key_my; a failed row's
# open_key is its key).
_BLOCKED_MYSQL = (
    "SELECT DISTINCT receiver, open_key FROM {table} FORCE INDEX (outbox_event_key_my) "
    "WHERE status = '{failed}' AND ({tests})"
)
# The INSERT on MySQL: as _INSERT_SQLITE, `signal` quoted, ``dedupe`` _DEDUPE_MYSQL or "".
_INSERT_MYSQL = (
    "INSERT INTO {table} (`signal`, receiver, payload, status, attempts, max_attempts, available_at, "
    "worker, created_at, last_error, last_traceback, queue, ordering_key, dedupe_key{trace_column}) "
    "VALUES {rows}{dedupe}"
)
# One row: ``due`` and ``when`` (created_at) the database's clock or parameters.
_ROW_MYSQL = "(%s, %s, %s, '{pending}', 0, %s, {due}, '', {when}, '', '', %s, %s, %s{traced})"


def _insert_mysql(
    connection: BaseDatabaseWrapper,
    alias: str,
    signal: str,
    receivers: Sequence[NewEvent],
    payload: str,
    trace_context: str | None = None,
) -> None:
    """:func:`insert_events` on MySQL/MariaDB: one INSERT, after the key locks and the test
    for blocked keys when some events are keyed (in a transaction: the sender's, or one
    of its own in autocommit, so that the locks cover the INSERT)."""
    from django.db import transaction

    database_clock = _mysql_clock(connection)
    moment = timezone.now()
    keyed = sorted({(row.receiver, row.ordering_key) for row in receivers if row.ordering_key is not None})
    rows, params = [], []
    trace_column, traced = ("", "") if trace_context is None else (", trace_context", ", %s")
    row = _sql(_ROW_MYSQL)
    # Unkeyed events need no transaction of their own: one INSERT is atomic.
    atomic = transaction.atomic(using=alias, savepoint=False) if keyed else contextlib.nullcontext()
    with atomic, connection.cursor() as cursor:
        blocked: set[tuple[str, bytes]] = set()
        if keyed:
            locks = sorted({key_lock(receiver, key)[1] for receiver, key in keyed})
            cursor.execute(_KEY_LOCK_MYSQL.format(rows=", ".join(["(%s)"] * len(locks))), locks)
            tests = " OR ".join(["(receiver = %s AND open_key = CAST(%s AS BINARY))"] * len(keyed))
            cursor.execute(
                _sql(_BLOCKED_MYSQL).format(tests=tests), [part for pair in keyed for part in pair]
            )
            blocked = {(receiver, bytes(key)) for receiver, key in cursor.fetchall()}
        park_at = _adapt(connection, parked())
        for receiver, max_attempts, queue, key, delay, dedupe in receivers:
            if database_clock:
                when, when_params = _MY_NOW, []
                due, due_params = (_my_later(delay), []) if delay else (_MY_NOW, [])
            else:
                when, when_params = "%s", [_adapt(connection, moment)]
                later = moment + datetime.timedelta(seconds=delay or 0)
                due, due_params = "%s", [_adapt(connection, later)]
            if key is not None and (receiver, key.encode()) in blocked:
                due, due_params = "%s", [park_at]
            rows.append(row.format(due=due, when=when, traced=traced))
            params += [signal, receiver, payload, max_attempts, *due_params, *when_params, queue, key, dedupe]
            if traced:
                params.append(trace_context)
        dedupe = _DEDUPE_MYSQL if any(row.dedupe_key is not None for row in receivers) else ""
        statement = _sql(_INSERT_MYSQL).format(trace_column=trace_column, rows=", ".join(rows), dedupe=dedupe)
        cursor.execute(statement, params)


def _park_behind_mysql(cursor: CursorWrapper, connection: BaseDatabaseWrapper, event_id: int) -> None:
    """_PARK_BEHIND on MySQL, which refuses a subquery on the table an UPDATE writes: the
    failed row's receiver and key first (primary key), then its pending followers
    (outbox_event_key_my)."""
    cursor.execute(_sql(_FAILED_KEY_MYSQL), [event_id])
    row = cursor.fetchone()
    if row is None or row[1] is None:
        return
    cursor.execute(_sql(_PARK_BEHIND_MYSQL), [_adapt(connection, parked()), row[0], row[1], event_id])


_FAILED_KEY_MYSQL = "SELECT receiver, ordering_key FROM {table} WHERE id = %s AND status = '{failed}'"
_PARK_BEHIND_MYSQL = (
    "UPDATE {table} SET available_at = %s WHERE receiver = %s AND open_key = CAST(%s AS BINARY) "
    "AND status = '{pending}' AND id > %s"
)


# _UNPARK as a self-join (MySQL refuses a subquery on the table an UPDATE writes): the
# parked rows through outbox_event_due_my (their due_at is the last range), each probing
# outbox_event_key_my for a failed earlier event of its key.
_UNPARK_MYSQL = (
    "UPDATE {table} LEFT JOIN {table} AS earlier ON earlier.receiver = {table}.receiver "
    "AND earlier.open_key = CAST({table}.ordering_key AS BINARY) AND earlier.id < {table}.id "
    "AND earlier.status = '{failed}' SET {table}.available_at = {now} "
    "WHERE {table}.status = '{pending}' AND {table}.due_at >= %s AND earlier.id IS NULL"
)
