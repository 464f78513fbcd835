"""History entries (Django's ``LogEntry``) for the admin's replay and discard.

Each event an operation changed gets an entry on its History page naming the user and what
was done, up to :data:`LOG_EACH_UP_TO` events; beyond that one summary entry counts the rest,
so that replaying "Select all 100,000" writes two INSERTs, not 100,000. The events to name
are read (their id, receiver and status, nothing else) just before the operation's UPDATE.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from .models import Event

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

__all__ = ["LOG_EACH_UP_TO", "Selection", "select", "write"]

#: Events an operation logs one by one; beyond this, one summary entry counts the rest.
LOG_EACH_UP_TO = 100


@dataclass
class Selection:
    """Events an operation will change (up to the limit), as read just before it changes them."""

    events: list[Event]


def select(queryset: QuerySet[Event], statuses: Sequence[str]) -> Selection:
    """Read up to :data:`LOG_EACH_UP_TO` events of ``queryset`` in ``statuses``.

    In no order: ``ORDER BY id`` could walk the primary key past millions of done rows to
    find a hundred failed ones, where the status's partial index finds them at once."""
    rows = queryset.filter(status__in=statuses).order_by().values_list("pk", "receiver", "status")
    rows = rows[:LOG_EACH_UP_TO]  # read at call time, so that tests can lower it
    return Selection([Event(pk=pk, receiver=receiver, status=status) for pk, receiver, status in rows])


def _was(statuses: Counter[str]) -> str:
    if len(statuses) == 1:
        return next(iter(statuses))
    return ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))


def write(
    user_id: Any,
    selection: Selection,
    *,
    changed: int,
    selected: dict[str, int],
    verb: StrOrPromise,
    outcome: StrOrPromise = "",
) -> None:
    """Log ``verb`` for the selected events, and one summary for ``changed`` beyond them.

    ``selected`` counts the events the operation applied to by status (its
    ``ActionResult.selected``); the summary names the statuses of those not logged one by one.
    ``outcome`` ("due now") follows the status in each message.
    """
    tail = f": {outcome}." if outcome else "."
    by_message: dict[str, list[Event]] = {}
    for event in selection.events:
        by_message.setdefault(f"{verb} ({_('was')} {event.status}){tail}", []).append(event)
    if hasattr(LogEntry.objects, "log_actions"):  # Django 5.1+: one INSERT per message
        for message, events in by_message.items():
            LogEntry.objects.log_actions(user_id, events, CHANGE, message)
    elif by_message:  # Django 4.2 and 5.0: log_action() is one INSERT per event
        content_type = ContentType.objects.get_for_model(Event, for_concrete_model=False)
        LogEntry.objects.bulk_create(
            LogEntry(
                user_id=user_id,
                content_type_id=content_type.pk,
                object_id=str(event.pk),
                object_repr=str(event)[:200],
                action_flag=CHANGE,
                change_message=message,
            )
            for message, events in by_message.items()
            for event in events
        )
    rest = changed - len(selection.events)
    if rest > 0:
        statuses = Counter(selected) - Counter(event.status for event in selection.events)
        was = f" ({_('was')} {_was(statuses)})" if statuses else ""
        # No object_id: the entry is on no event's History page, and the admin's "Recent
        # actions" shows it without a link.
        LogEntry.objects.create(
            user_id=user_id,
            content_type=ContentType.objects.get_for_model(Event, for_concrete_model=False),
            object_id=None,
            object_repr=_("%(n)d more outbox events") % {"n": rest},
            action_flag=CHANGE,
            change_message=f"{verb} {_('%(n)d more events') % {'n': rest}}{was}{tail}",
        )
