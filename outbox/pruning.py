"""Deleting old finished events in small batches: ``manage.py outbox_prune`` and the worker.

A queue table that is never pruned grows without bound. Deleting millions of rows in one
statement holds their locks and writes all of their WAL in one transaction, and leaves
autovacuum one huge job; so pruning walks the old rows in ``(finished_at, id)`` order
through the partial index ``outbox_event_finished``, ``batch_size`` rows at a time, and
deletes each page by primary key in its own short statement. Each page starts where the
last one ended, so no statement rescans the dead index entries of the pages before it.

Only ``done``, ``failed`` and ``discarded`` events are ever deleted: pending and running
events have no ``finished_at`` and are outside the index, and the DELETE tests the status
again (see :func:`outbox.queries.delete_finished`).

Call these in autocommit mode (as management commands and the worker run): inside
``transaction.atomic()`` every batch would belong to the one enclosing transaction.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db.models import Q

from . import queries
from .conf import settings
from .models import Event

__all__ = ["PruneResult", "count_prunable", "prune"]


@dataclass
class PruneResult:
    """What a prune deleted, by status, and whether it reached the end of the old rows."""

    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    #: False when a deadline or a stop request ended it early; old rows may remain.
    complete: bool = True

    @property
    def total(self) -> int:
        """Events deleted, whatever their status."""
        return sum(self.deleted.values())


def _statuses(statuses: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(statuses))
    wrong = [status for status in chosen if status not in queries.PRUNABLE]
    if wrong:
        raise ValueError(f"cannot prune {', '.join(wrong)} events: only {', '.join(queries.PRUNABLE)}")
    return chosen


def count_prunable(
    database: str, older_than: datetime.timedelta, statuses: Iterable[str] = ("done",)
) -> dict[str, int]:
    """How many events :func:`prune` would delete now, by status (one counting query)."""
    before = queries.database_now(database) - older_than
    old = Event.objects.using(database).filter(status__in=_statuses(statuses), finished_at__lt=before)
    return old.count_by_status()


def prune(
    database: str,
    older_than: datetime.timedelta,
    *,
    statuses: Iterable[str] = ("done",),
    batch_size: int | None = None,
    deadline: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> PruneResult:
    """Delete events of ``statuses`` that finished more than ``older_than`` ago.

    ``batch_size`` rows per DELETE (default ``OUTBOX["PRUNE_BATCH_SIZE"]``). Stops early,
    with ``complete=False``, once ``time.monotonic()`` passes ``deadline`` or
    ``should_stop()`` is true; both are tested between batches, never within one.
    """
    batch_size = batch_size or settings.PRUNE_BATCH_SIZE
    # "Finished before" by the clock that wrote finished_at (the database's on PostgreSQL).
    before = queries.database_now(database) - older_than
    result = PruneResult()
    events = Event.objects.using(database)
    for status in _statuses(statuses):
        result.deleted[status] = 0
        old = events.filter(status=status, finished_at__lt=before).order_by("finished_at", "id")
        page = old
        while True:
            if should_stop() or (deadline is not None and time.monotonic() >= deadline):
                result.complete = False
                return result
            rows = list(page.values_list("id", "finished_at")[:batch_size])
            if not rows:
                break
            ids = [pk for pk, _ in rows]
            result.deleted[status] += queries.delete_finished(database, ids, status, before)
            result.batches += 1
            if len(rows) < batch_size:
                break
            # Keyset: the next page starts after this one's last (finished_at, id). The
            # redundant ``finished_at >= last`` gives the index a lower bound to seek to.
            last_id, last_at = rows[-1]
            page = old.filter(finished_at__gte=last_at).filter(Q(finished_at__gt=last_at) | Q(id__gt=last_id))
        if status == "failed" and result.deleted[status]:
            queries.unpark(database)  # the keys those events blocked are free again
    return result
