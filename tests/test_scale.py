"""Scale facts: the claim reads only due rows however many are done, and worker memory
stays flat. Full sizes run in ``make chaos`` (``stress/scale.py``)."""

from __future__ import annotations

import contextlib
import json

import pytest
from django.db import connection

from outbox import queries
from stress import scale
from tests.conftest import postgres_only, worker_env

MiB = 1024 * 1024


class _Captured(Exception):
    pass


def _claim_plan(batch_size: int, analyze: bool = True) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim statement exactly as queries.claim() sends it
    (``analyze=False``: the plan alone, nothing run)."""
    plans = []
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"

    def explain(execute, sql, params, many, context):
        if "SKIP LOCKED" not in sql:
            return execute(sql, params, many, context)
        execute(f"EXPLAIN ({options}) " + sql, params, many, context)
        plan = context["cursor"].fetchone()[0]
        plans.append(json.loads(plan) if isinstance(plan, str) else plan)
        raise _Captured

    with connection.execute_wrapper(explain), pytest.raises(_Captured):
        queries.claim("default", batch_size, 60, "explain")
    return plans[0][0]["Plan"]


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

    plan = _claim_plan(batch_size=500)
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


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_claim_walks_the_due_index_in_order_over_dead_rows_vacuum_cannot_remove():
    # With fresh statistics. With statistics taken while the table was empty the planner
    # chooses a bitmap scan and a sort of every entry (tests/test_planner_statistics.py shows
    # what the worker's ANALYZE corrects); even fresh, the two plans' costs are close here.
    with dead_rows_kept(20000, due=300, analyze=True):
        plan = _claim_plan(batch_size=100, analyze=False)
    nodes = list(_nodes(plan))
    kinds = {node["Node Type"] for node in nodes}
    assert not kinds & {"Sort", "Incremental Sort", "Bitmap Heap Scan", "Bitmap Index Scan", "Seq Scan"}, (
        kinds
    )
    # The batch's rows come from an ordered walk of the due index, stopped by the LIMIT.
    [select] = [n for n in nodes if n["Node Type"] == "Limit" and n.get("Subplan Name") == "CTE due"]
    walk = [n for n in _nodes(select) if n.get("Index Name") == "outbox_event_due"]
    assert [n["Node Type"] for n in walk] == ["Index Scan"]
    assert walk[0]["Scan Direction"] == "Forward"
