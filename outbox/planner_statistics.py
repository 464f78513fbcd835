"""The planner's statistics of the events table, kept fresh by the worker (PostgreSQL).

The claim walks ``outbox_event_due`` in order and stops at its LIMIT, whatever dead entries
the index holds (``tests/test_scale.py`` proves the plan with EXPLAIN). The planner picks
that walk from the table's statistics. Taken while the table was nearly empty and never
taken again (autovacuum off, or behind a burst), they say the due index holds a handful of
entries, and the planner then prefers a bitmap scan and a sort of every entry: with a
million finished rows VACUUM cannot remove yet, every claim reads them all.

Autovacuum analyzes a table once ``50 + 10%`` of its rows changed. A worker does the same,
more lazily, when autovacuum has not: if more rows changed since the last ANALYZE than the
statistics count (and at least :data:`STALE_MIN_CHANGES`), it runs ``ANALYZE (SKIP_LOCKED)``
on the table between batches. ANALYZE reads a sample (30,000 rows at the default
statistics target), blocks no reader or writer (its lock conflicts only with VACUUM, DDL
and another ANALYZE; SKIP_LOCKED skips the table if one of those holds it, so workers never
queue behind each other), and is allowed to the table's owner. ``OUTBOX["WORKER_ANALYZE"]``
turns it off.
"""

from __future__ import annotations

import logging

from django.db import connections

from .models import Event

__all__ = ["STALE_MIN_CHANGES", "analyze_if_stale", "stale"]

logger = logging.getLogger(__name__)

#: Fewer changed rows than this never count as stale: autovacuum's business, and the
#: planner's choice among few rows costs little either way.
STALE_MIN_CHANGES = 10_000

# Changes since the last ANALYZE (by this server's statistics system, which other sessions
# flush within a second), the row count the planner believes (-1: never analyzed), and
# whether this role may analyze the table (it owns it, or is a member of its owner).
_STATE = (
    "SELECT s.n_mod_since_analyze, c.reltuples, pg_has_role(c.relowner, 'USAGE') "
    "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.relid = %s::regclass"
)


def stale(database: str) -> bool | None:
    """Whether the events table's statistics on ``database`` are stale (see the module's
    docstring); None when this role may not analyze it, or off PostgreSQL."""
    connection = connections[database]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(_STATE, [Event._meta.db_table])
        row = cursor.fetchone()
    if row is None:
        return None
    changed, believed, allowed = row
    if not allowed:
        return None
    return changed >= max(STALE_MIN_CHANGES, believed)


def analyze_if_stale(database: str) -> bool:
    """ANALYZE the events table on ``database`` if its statistics are stale; return whether
    it ran. The caller's connection must not be inside a transaction it means to keep short
    (ANALYZE may take a few hundred milliseconds on a large table)."""
    if not stale(database):
        return False
    table = connections[database].ops.quote_name(Event._meta.db_table)
    with connections[database].cursor() as cursor:
        cursor.execute(f"ANALYZE (SKIP_LOCKED) {table}")
    logger.info("analyzed %s: its planner statistics were stale", Event._meta.db_table)
    return True
