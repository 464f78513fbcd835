"""Operator actions on events: replay and discard, each one bulk UPDATE.

The admin's actions and ``manage.py outbox_replay`` both call these, so they behave the
same everywhere. They take any queryset of :class:`~outbox.models.Event` (a selection,
or every event matching a filter) and never load the rows into Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count, QuerySet
from django.utils import timezone

from .models import Event

__all__ = ["ActionResult", "discard", "replay"]

S = Event.Status
#: Events in these states may be replayed without confirmation.
REPLAYABLE = (S.FAILED, S.DISCARDED, S.PENDING)
#: Events in these states may be discarded: anything not running and not yet done.
DISCARDABLE = (S.PENDING, S.FAILED)


@dataclass
class ActionResult:
    """How many events an action changed, and how many it refused, by status."""

    changed: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        refused = ", ".join(f"{n} {status}" for status, n in sorted(self.refused.items()))
        return f"{self.changed} changed" + (f"; refused {refused}" if refused else "")


def _refused(queryset: QuerySet[Event], allowed: tuple[str, ...]) -> dict[str, int]:
    rows = queryset.exclude(status__in=allowed).order_by().values("status").annotate(n=Count("pk"))
    return {row["status"]: row["n"] for row in rows}


def replay(queryset: QuerySet[Event], *, include_done: bool = False) -> ActionResult:
    """Make events due now, with their attempts reset; the last error is kept for reference.

    Events that are ``running`` are refused (their worker still holds them); ``done``
    events are refused unless ``include_done`` is true, since that runs their receiver again.
    """
    allowed = (*REPLAYABLE, S.DONE) if include_done else REPLAYABLE
    refused = _refused(queryset, allowed)
    changed = (
        queryset.filter(status__in=allowed)
        .order_by()
        .update(
            status=S.PENDING,
            attempts=0,
            available_at=timezone.now(),
            lease_token=None,
            finished_at=None,
        )
    )
    return ActionResult(changed, refused)


def discard(queryset: QuerySet[Event]) -> ActionResult:
    """Mark pending or failed events ``discarded``: they will never run."""
    refused = _refused(queryset, DISCARDABLE)
    changed = (
        queryset.filter(status__in=DISCARDABLE)
        .order_by()
        .update(status=S.DISCARDED, lease_token=None, finished_at=timezone.now())
    )
    return ActionResult(changed, refused)
