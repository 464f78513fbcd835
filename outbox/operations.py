"""Operator actions on events: replay and discard, each one bulk UPDATE.

The admin's actions and ``manage.py outbox_replay`` both call these, so they behave the
same everywhere. They take any queryset of :class:`~outbox.models.Event` (a selection,
or every event matching a filter) and never load the rows into Python.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.db.models import Q

from . import queries
from .models import Event, EventQuerySet

__all__ = ["ActionResult", "discard", "replay", "replayable", "select_events"]

#: Events in these states may be replayed without confirmation.
REPLAYABLE = (Event.Status.FAILED, Event.Status.DISCARDED, Event.Status.PENDING)
#: Events in these states may be discarded: anything not running and not yet done.
DISCARDABLE = (Event.Status.PENDING, Event.Status.FAILED)


@dataclass
class ActionResult:
    """How many events an action changed, and how many it refused, by status."""

    changed: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    #: The events the action applies to, by status, as counted just before it ran.
    selected: dict[str, int] = field(default_factory=dict)
    #: True when nothing was changed: ``changed`` is how many would have been.
    dry_run: bool = False

    def __str__(self) -> str:
        refused = ", ".join(f"{n} {status}" for status, n in sorted(self.refused.items()))
        text = f"{self.changed} {'would change' if self.dry_run else 'changed'}"
        if self.selected:
            text += f" ({', '.join(f'{n} {status}' for status, n in sorted(self.selected.items()))})"
        return text + (f"; refused {refused}" if refused else "")


def _by_status(queryset: EventQuerySet, allowed: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    """One GROUP BY: (allowed events by status, refused events by status)."""
    counts = queryset.count_by_status()
    selected = {status: n for status, n in counts.items() if status in allowed}
    return selected, {status: n for status, n in counts.items() if status not in allowed}


def select_events(
    queryset: EventQuerySet | None = None,
    *,
    receivers: Iterable[str] = (),
    signals: Iterable[str] = (),
    queues: Iterable[str] = (),
    statuses: Iterable[str] = (),
    ids: Iterable[tuple[int, int]] = (),
    since: datetime.datetime | None = None,
) -> EventQuerySet:
    """Events matching every given filter; within one filter, any of its values.

    ``receivers`` and ``signals`` are dotted paths, ``queues`` queue names, ``ids``
    inclusive ``(first, last)`` ranges, ``since`` a lower bound on ``created_at``. Filtering
    on a status lets the partial indexes serve the query (``failed``, ``done`` and ``discarded`` through
    ``outbox_event_finished``, ``pending`` and ``running`` through ``outbox_event_due``).
    """
    queryset = Event.objects.all() if queryset is None else queryset
    receivers, signals, statuses, ids = list(receivers), list(signals), list(statuses), list(ids)
    queues = list(queues)
    if receivers:
        queryset = queryset.filter(receiver__in=receivers)
    if signals:
        queryset = queryset.filter(signal__in=signals)
    if queues:
        queryset = queryset.in_queues(*queues)
    if statuses:
        # ``=`` for one: SQLite matches partial indexes term by term (see with_status()).
        queryset = queryset.with_status(*statuses)
    if ids:
        ranges = Q()
        for first, last in ids:
            ranges |= Q(pk__gte=first, pk__lte=last)
        queryset = queryset.filter(ranges)
    if since is not None:
        queryset = queryset.filter(created_at__gte=since)
    return queryset


def replayable(*, include_done: bool = False) -> tuple[str, ...]:
    """The statuses :func:`replay` changes: with ``include_done``, ``done`` too."""
    return (*REPLAYABLE, Event.Status.DONE) if include_done else REPLAYABLE


def replay(queryset: EventQuerySet, *, include_done: bool = False, dry_run: bool = False) -> ActionResult:
    """Make events due now, with their attempts reset; the last error is kept for reference.

    Events that are ``running`` are refused (their worker still holds them); ``done``
    events are refused unless ``include_done`` is true, since that runs their receiver again.
    With ``dry_run``, only counts what would change.
    """
    allowed = replayable(include_done=include_done)
    selected, refused = _by_status(queryset, allowed)
    if dry_run:
        return ActionResult(sum(selected.values()), refused, selected, dry_run=True)
    changed = (
        queryset.with_status(*allowed)
        .order_by()
        .update(
            status=Event.Status.PENDING,
            attempts=0,
            # Due by the clock the worker claims with (the database's on PostgreSQL).
            available_at=queries.database_now(queryset.db),
            lease_token=None,
            finished_at=None,
            # Out of outbox_event_dedupe for good, as after any claim: a newer pending row
            # of its dedupe key may hold the key now (queries.DEDUPE_CONFLICT).
            batch_attempt=False,
        )
    )
    queries.unpark(queryset.db)  # what a replayed failed event blocked may run after it
    return ActionResult(changed, refused, selected)


def discard(queryset: EventQuerySet, *, dry_run: bool = False) -> ActionResult:
    """Mark pending or failed events ``discarded``: they will never run.

    With ``dry_run``, only counts what would change.
    """
    selected, refused = _by_status(queryset, DISCARDABLE)
    if dry_run:
        return ActionResult(sum(selected.values()), refused, selected, dry_run=True)
    changed = (
        queryset.with_status(*DISCARDABLE)
        .order_by()
        .update(
            status=Event.Status.DISCARDED, lease_token=None, finished_at=queries.database_now(queryset.db)
        )
    )
    queries.unpark(queryset.db)  # a discarded failed event no longer blocks its key
    return ActionResult(changed, refused, selected)
