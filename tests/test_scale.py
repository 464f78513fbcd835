"""Scale facts: the claim reads only due rows however many are done, and worker memory
stays flat. Full sizes run in ``make chaos`` (``stress/scale.py``)."""

from __future__ import annotations

import contextlib
import json

import pytest
from django.db import OperationalError, connection

from outbox import queries
from stress import scale
from tests.conftest import postgres_only, worker_env

MiB = 1024 * 1024


class _Captured(Exception):
    pass


def explained_as_sent(sql: str, options: str = "") -> tuple[str, bool]:
    """The claim's message ``sql`` (its pinned planner settings, queries.PIN_PLAN_POSTGRESQL,
    when the claim is its own transaction, then the claim) with the claim explained
    (``options``: EXPLAIN's, in parentheses); and whether the settings' result comes first."""
    settings, _, claim = sql.rpartition("; ")
    explain = f"EXPLAIN ({options}) " if options else "EXPLAIN "
    return (f"{settings}; {explain}{claim}" if settings else explain + claim), bool(settings)


def _claim_plan(batch_size: int, analyze: bool = True, **claim) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim statement exactly as queries.claim_after()
    sends it (``analyze=False``: the plan alone, nothing run; ``claim``: claim_after's
    keywords); the whole EXPLAIN output, its plan under "Plan"."""
    plans = []
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"

    def explain(execute, sql, params, many, context):
        if "SKIP LOCKED" not in sql:
            return execute(sql, params, many, context)
        statement, pinned = explained_as_sent(sql, options)
        execute(statement, params, many, context)
        if pinned:
            context["cursor"].nextset()
        plan = context["cursor"].fetchone()[0]
        plans.append(json.loads(plan) if isinstance(plan, str) else plan)
        raise _Captured

    with connection.execute_wrapper(explain), pytest.raises(_Captured):
        queries.claim_after("default", batch_size, 60, "explain", **claim)
    return plans[0][0]


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@postgres_only
@pytest.mark.django_db
def test_the_claim_reads_only_due_rows_among_a_million_done():
    with connection.cursor() as cursor:
        row = (
            "SELECT 'tests.testapp.faults.nothing', 'tests.testapp.faults.does_nothing', "
            "'{\"sender\": null, \"kwargs\": {}}'::jsonb, %s, 1, 8, now() + %s::interval, '', now(), '', '' "
        )
        columns = (
            "INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts, "
            "available_at, worker, created_at, last_error, last_traceback) "
        )
        cursor.execute(columns + row + "FROM generate_series(1, 1000000)", ["done", "-1 day"])
        cursor.execute(columns + row + "FROM generate_series(1, 1000)", ["pending", "1 hour"])  # not due
        cursor.execute(columns + row + "FROM generate_series(1, 1000)", ["running", "1 hour"])  # leased
        cursor.execute(columns + row + "FROM generate_series(1, 100)", ["pending", "-1 second"])  # due
        cursor.execute("ANALYZE outbox_event")
        cursor.execute("SELECT pg_relation_size('outbox_event') / current_setting('block_size')::int")
        table_pages = cursor.fetchone()[0]

    plan = _claim_plan(batch_size=500)["Plan"]
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == "outbox_event" and "Scan" in n["Node Type"]]
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], "no sequential scan of the table"
    [due] = [n for n in scans if n.get("Index Name") == "outbox_event_due"]
    # The index holds only pending and running rows, and its range stops at "now": of
    # 1,002,100 rows the scan reads the 100 that are due, though the batch allows 500.
    assert due["Actual Rows"] == 100
    assert plan["Actual Rows"] == 100
    # Finding and locking the due rows: the partial index, then one heap page per row.
    # (The head-of-key probe of keyed rows has a Limit of its own, never run here.)
    [select] = [n for n in _nodes(plan) if n["Node Type"] == "Limit" and n.get("Subplan Name") == "CTE due"]
    assert select["Shared Hit Blocks"] + select["Shared Read Blocks"] < 300
    # All of it, writes included (new row versions, two index entries each): a sliver of
    # the table, however many done rows it holds.
    touched = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    assert touched < table_pages / 10, f"{touched} pages of {table_pages}"


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_worker_memory_stays_flat():
    memory = scale.measure(10_000, worker_env())
    print(f"\n{memory}")
    # Python's allocator keeps some arenas; a leak per event would show as megabytes here.
    assert memory.growth < 8 * MiB, memory


_LIFE = (
    "INSERT INTO outbox_event (signal, receiver, payload, status, attempts, max_attempts, "
    "available_at, worker, created_at, last_error, last_traceback) "
    "SELECT 'tests.testapp.faults.nothing', 'tests.testapp.faults.does_nothing', "
    "'{\"sender\": null, \"kwargs\": {}}'::jsonb, 'pending', 0, 8, now(), '', now(), '', '' "
    "FROM generate_series(1, %s)"
)


@contextlib.contextmanager
def dead_rows_kept(finished: int, due: int = 0, analyze: bool = False):
    """``finished`` events taken through their whole life (pending, running, done) while a
    ``REPEATABLE READ`` snapshot is held open in another session, so that their dead row
    versions stay, and so do their entries in the due index (two each); then ``due``
    events due now, and an ANALYZE if asked. The snapshot is held until the block ends."""
    import psycopg

    params = dict(connection.get_connection_params())
    params.pop("cursor_factory", None)
    with psycopg.connect(**params) as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM outbox_event").fetchone()
        with connection.cursor() as cursor:
            cursor.execute(_LIFE, [finished])
            cursor.execute(
                "UPDATE outbox_event SET status = 'running', lease_token = 't', "
                "available_at = now() - interval '1 second'"
            )
            cursor.execute("UPDATE outbox_event SET status = 'done', finished_at = now(), lease_token = NULL")
            if due:
                cursor.execute(_LIFE, [due])
            if analyze:
                cursor.execute("ANALYZE outbox_event")
        try:
            yield
        finally:
            holder.rollback()


@contextlib.contextmanager
def _planner(statistics: str):
    """20,000 finished events whose dead entries a held snapshot keeps in the due index, and
    300 due ones, as the planner sees them: ``fresh`` (analyzed now), ``stale`` (analyzed
    while the table was empty: it believes the index nearly empty) or ``costly`` (fresh, but
    random page reads priced 4,000 times a sequential one for this session: every plan but
    the ordered walk looks cheaper; unpinned, the claim takes a hash join over the whole
    table and a sequential scan)."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE outbox_event")  # empty
    with dead_rows_kept(20000, due=300, analyze=statistics != "stale"):
        if statistics == "costly":
            with connection.cursor() as cursor:
                cursor.execute("SET random_page_cost = 4000")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET random_page_cost")


_CLAIMS = {
    "every queue": {},
    "from a position": {"after": (946_684_800_000_000, 0)},  # 2000-01-01 in microseconds: queries.Position
    "carrying done": {"done": ("t", [1, 2, 3])},
    "named queues": {"queues": ["default", "other"]},
}


@postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("claim", list(_CLAIMS))
@pytest.mark.parametrize("statistics", ["fresh", "stale", "costly"])
def test_the_claim_walks_the_due_index_in_order_over_dead_rows_vacuum_cannot_remove(statistics, claim):
    # The worker's claim is its own transaction, sent with its plan pinned
    # (queries.PIN_PLAN_POSTGRESQL): left to the planner, the costly case gives a hash join
    # over the whole table, a sequential scan and a sort, and the others a bitmap scan and a
    # sort of every due entry now and then (the plans' costs are close there).
    with _planner(statistics):
        explained = _claim_plan(batch_size=100, analyze=False, **_CLAIMS[claim])
    assert "JIT" not in explained, "no JIT compilation"
    nodes = list(_nodes(explained["Plan"]))
    kinds = [node["Node Type"] for node in nodes]
    assert not set(kinds) & {
        "Incremental Sort",
        "Bitmap Heap Scan",
        "Bitmap Index Scan",
        "Seq Scan",
        "Hash Join",
        "Merge Join",
    }, kinds
    # A sort only where nothing else can do: the named queues' first rows, at most
    # ``limit`` from each queue.
    sorts = [node["Sort Key"] for node in nodes if node["Node Type"] == "Sort"]
    assert sorts == ([["one.due_at", "one.due_id"]] if claim == "named queues" else [])
    # The batch's rows come from an ordered walk of the due index (of each queue), stopped
    # by the LIMIT.
    [select] = [n for n in nodes if n["Node Type"] == "Limit" and n.get("Subplan Name") == "CTE due"]
    due_indexes = ("outbox_event_due", "outbox_event_queue_due")
    walks = [n for n in _nodes(select) if n.get("Index Name") in due_indexes]
    assert [n["Node Type"] for n in walks] == ["Index Scan"]
    assert walks[0]["Scan Direction"] == "Forward"
    [lock] = [n for n in _nodes(select) if n["Node Type"] == "LockRows"]
    assert lock["Plans"][0] is walks[0]
    assert [n for n in _nodes(select) if n["Node Type"] == "Limit" and n["Plans"][0] is lock]


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_pinned_settings_end_with_the_claim_even_when_it_fails():
    import psycopg

    from tests.testapp.signals import pinged

    pinged.send(sender=None)
    settings = ", ".join(f"current_setting('{name}')" for name in queries.PIN_PLAN_POSTGRESQL)

    def pinned() -> set[str]:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {settings}")
            return set(cursor.fetchone())

    assert pinned() == {"on"}
    assert len(queries.claim("default", 10, 60, "w")[1]) == 1
    assert pinned() == {"on"}, "the receivers' queries plan as they would anyway"
    # A claim that fails (here: the table locked by another session beyond lock_timeout)
    # takes its settings with it: the message was one transaction, rolled back.
    params = dict(connection.get_connection_params())
    params.pop("cursor_factory", None)
    with psycopg.connect(**params) as other:
        other.execute("LOCK TABLE outbox_event IN ACCESS EXCLUSIVE MODE")
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '100ms'")
        try:
            with pytest.raises(OperationalError, match="lock timeout"):
                queries.claim("default", 10, 60, "w")
            assert pinned() == {"on"}
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
    pinged.send(sender=None)
    assert len(queries.claim("default", 10, 60, "w")[1]) == 1, "and the connection claims again"
