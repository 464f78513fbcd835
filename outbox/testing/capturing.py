"""``capture()``: the events a block of code wrote, decoded, without running them.

It notes the highest event id on the database when the block starts, and lists the rows
above it: those the block wrote, on the test's own connection, committed or not (inside
``django.test.TestCase`` nothing is committed). Arguments are decoded by the worker's
decoder, so they are what the receiver would be called with: model instances fetched
again from the database, as they are when read.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, overload

from django.db import connections

from .. import queries
from ..conf import settings
from ..decoding import PayloadDecoder
from ..registry import get_receiver, receiver_path

__all__ = ["Sent", "SentEvent", "capture"]


@dataclass(frozen=True)
class SentEvent:
    """One event written: who it is for, and the arguments its receiver would get."""

    id: int
    #: The signal's and the receiver's dotted paths, as stored.
    signal: str
    receiver: str
    sender: Any
    kwargs: dict[str, Any]
    queue: str
    ordering_key: str | None
    status: str
    created_at: datetime.datetime
    #: When it is due: later than ``created_at`` for a delayed event.
    available_at: datetime.datetime = field(repr=False)

    @property
    def delay(self) -> datetime.timedelta:
        """How long after it was written the event is due (zero if due at once)."""
        return max(self.available_at - self.created_at, datetime.timedelta(0))

    @property
    def func(self) -> Callable[..., Any] | None:
        """The receiver function, if it is registered in this process."""
        spec = get_receiver(self.receiver)
        return None if spec is None else spec.func


class Sent(Sequence[SentEvent]):
    """The events written since :func:`capture` began, in id order.

    Read again from the database (and decoded again) at each use until the block ends,
    so statuses are current; then kept as they were at its end.
    """

    def __init__(self, alias: str, after: int) -> None:
        self.alias = alias
        self._after = after
        self._events: list[SentEvent] = []
        self._open = True

    def _current(self) -> list[SentEvent]:
        if self._open:
            self._read()
        return self._events

    def _read(self) -> None:
        from ..models import Event  # the app registry is ready by the time a test captures

        rows = list(Event.objects.using(self.alias).filter(id__gt=self._after).order_by("id"))
        decoder = PayloadDecoder()
        for row in rows:
            decoder.add(row.payload)
        events = []
        for row in rows:
            sender, kwargs = decoder.decode(row.payload)
            events.append(
                SentEvent(
                    row.id,
                    row.signal,
                    row.receiver,
                    sender,
                    kwargs,
                    row.queue,
                    row.ordering_key,
                    row.status,
                    row.created_at,
                    row.available_at,
                )
            )
        self._events = events

    def close(self) -> None:
        """Read the events one last time and keep them as they are."""
        if self._open:
            self._read()
            self._open = False

    @overload
    def __getitem__(self, index: int) -> SentEvent: ...
    @overload
    def __getitem__(self, index: slice) -> list[SentEvent]: ...
    def __getitem__(self, index: int | slice) -> SentEvent | list[SentEvent]:
        return self._current()[index]

    def __len__(self) -> int:
        return len(self._current())

    def __iter__(self) -> Iterator[SentEvent]:
        return iter(self._current())

    def __repr__(self) -> str:
        return f"<Sent {self._current()!r}>"

    def to(self, receiver: str | Callable[..., Any]) -> list[SentEvent]:
        """The events for one receiver: a function, or its dotted path."""
        path = receiver if isinstance(receiver, str) else receiver_path(receiver)
        return [event for event in self._current() if event.receiver == path]

    @property
    def receivers(self) -> list[str]:
        """The receivers' dotted paths, one per event, in order."""
        return [event.receiver for event in self._current()]


@contextmanager
def capture(*, using: str | None = None) -> Iterator[Sent]:
    """List the events written inside the block, decoded, without running them.

    ``with outbox.testing.capture() as sent:`` then ``sent`` holds
    :class:`SentEvent` items (``receiver``, ``signal``, ``sender``, ``kwargs``, ``queue``,
    ``ordering_key``, ``delay``, ...). ``using``: the database holding the events (default:
    ``OUTBOX["DATABASE"]``). A receiver with ``delivery="on_commit"`` writes no event: run
    it with ``TestCase.captureOnCommitCallbacks(execute=True)``.
    """
    alias = using or settings.database
    sent = Sent(alias, _highest_id(alias))
    try:
        yield sent
    finally:
        sent.close()


def _highest_id(alias: str) -> int:
    # The primary key's index answers max(id) with one probe.
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {queries.TABLE}")
        return cursor.fetchone()[0]
