"""The claim as a prepared statement (PostgreSQL): psycopg prepares it once the connection's
``prepare_threshold`` allows (Django's OPTIONS; Django's default, None, never does), the
claims it then runs claim as before, and the plan PostgreSQL caches for it is still the
ordered walk of ``outbox_event_due`` stopped by the LIMIT."""

from __future__ import annotations

import re

import pytest
from django.db import connection, transaction

from outbox import queries
from outbox.models import Event
from tests.conftest import postgres_only
from tests.test_scale import _nodes, dead_rows_kept
from tests.testapp.signals import pinged

pytestmark = [postgres_only, pytest.mark.django_db(transaction=True)]

_PREPARED_CLAIMS = (
    "SELECT statement, parameter_types::text[] FROM pg_prepared_statements WHERE statement LIKE %s"
)


@pytest.fixture
def threshold():
    """Set this test's connection's ``prepare_threshold`` (as OPTIONS would); the
    connection is closed after, so that no prepared statement outlives the test."""
    connection.ensure_connection()
    raw = connection.connection

    def set_threshold(value):
        raw.prepare_threshold = value

    yield set_threshold
    connection.close()


def _prepared_claims() -> list[tuple[str, list[str]]]:
    with connection.cursor() as cursor:
        cursor.execute(_PREPARED_CLAIMS, ["%SKIP LOCKED%"])
        return cursor.fetchall()


def _send(count: int) -> None:
    with transaction.atomic():
        for n in range(count):
            pinged.send(sender=None, n=n)


def test_django_s_default_prepares_nothing():
    if connection.settings_dict["OPTIONS"].get("prepare_threshold") is not None:
        pytest.skip("this run's OPTIONS set prepare_threshold (OUTBOX_TEST_PREPARE_THRESHOLD)")
    connection.ensure_connection()
    assert connection.connection.prepare_threshold is None
    for _ in range(8):
        queries.claim("default", 100, 60, "w")
    assert _prepared_claims() == []


def test_with_a_threshold_the_claim_is_prepared_and_claims_as_before(threshold):
    threshold(0)
    _send(250)
    seen, done = [], None
    while True:
        token, rows = queries.claim("default", 100, 60, "w", done=done)
        if not rows:
            break
        seen += [row.id for row in rows]
        done = (token, [row.id for row in rows])  # carried by the next claim, as the worker does
    assert sorted(seen) == sorted(Event.objects.values_list("id", flat=True)) and len(set(seen)) == 250
    assert Event.objects.done().count() == 250
    statements = [statement for statement, _ in _prepared_claims()]
    assert statements, "the claim was prepared"
    assert any("finished AS (UPDATE" in statement for statement in statements), (
        "and its variant carrying done"
    )


def test_the_cached_generic_plan_walks_the_due_index_in_order_over_dead_rows(threshold):
    with dead_rows_kept(20000, analyze=True):
        threshold(0)
        for _ in range(3):
            queries.claim("default", 100, 60, "w")  # finds nothing: the plan is what matters
        [(statement, types)] = _prepared_claims()
        # The plan PostgreSQL would cache for it once it stops planning per call: generic.
        values = {"token": "t", "lease": 60.0, "limit": 100, "worker": "w"}
        names = list(
            dict.fromkeys(re.findall(r"%\((\w+)\)s", queries._claim_postgresql(False, False, "", False)))
        )
        with connection.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_generic_plan")
            cursor.execute(f"PREPARE generic_claim({', '.join(types)}) AS {statement}")
            arguments = ", ".join(["%s"] * len(names))
            cursor.execute(
                f"EXPLAIN (FORMAT JSON) EXECUTE generic_claim({arguments})", [values[n] for n in names]
            )
            plan = cursor.fetchone()[0]
            cursor.execute("DEALLOCATE generic_claim")
            cursor.execute("RESET plan_cache_mode")
    plan = plan[0]["Plan"] if isinstance(plan, list) else plan
    nodes = list(_nodes(plan))
    kinds = {node["Node Type"] for node in nodes}
    assert not kinds & {"Sort", "Incremental Sort", "Bitmap Heap Scan", "Bitmap Index Scan", "Seq Scan"}, (
        kinds
    )
    [select] = [n for n in nodes if n["Node Type"] == "Limit" and n.get("Subplan Name") == "CTE due"]
    walk = [n for n in _nodes(select) if n.get("Index Name") == "outbox_event_due"]
    assert [n["Node Type"] for n in walk] == ["Index Scan"]
