"""The event a deferred receiver is running for: :func:`current_event`.

Its claimed row is held in a ``ContextVar`` (the :class:`EventInfo` is built only when asked
for: receivers that never ask pay nothing more), set for exactly the call of one receiver:
in the thread that calls a sync receiver (each pool thread of ``--concurrency N`` has its
own value), and inside the task of an async one (each task on the worker's loop runs in a
copy of the context, so tasks never see each other's event). ``async_to_sync`` and
``sync_to_async`` carry the context across, so an async receiver at concurrency 1, and sync
code it awaits, see it too.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

__all__ = ["EventInfo", "current_event", "end", "enter", "running"]


@dataclass(frozen=True)
class EventInfo:
    """What a deferred receiver may know about the event it runs for.

    ``attempt`` is 1 on the first try, 2 on the first retry, and so on (a replay starts the
    count again). ``idempotency_key`` (``"outbox-<id>"``) is the same on every attempt and
    replay of the event: hand it to payment APIs, email providers and webhooks so that an
    effect repeated by an at-least-once delivery is applied once.
    """

    id: int
    attempt: int
    max_attempts: int
    signal: str
    receiver: str
    queue: str
    ordering_key: str | None
    created_at: datetime.datetime | None

    @property
    def idempotency_key(self) -> str:
        """A string naming this event, stable across retries and replays."""
        return f"outbox-{self.id}"


# The claimed row (outbox.queries.Claimed) in hand, or None.
_current: ContextVar[Any] = ContextVar("outbox_current_event", default=None)


def current_event() -> EventInfo | None:
    """The event the calling deferred receiver runs for; None outside a worker's call of a
    receiver, and in ``delivery="on_commit"`` receivers (they have no event row)."""
    row = _current.get()
    if row is None:
        return None
    return EventInfo(
        id=row.id,
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        signal=row.signal,
        receiver=row.receiver,
        queue=row.queue,
        ordering_key=row.ordering_key,
        created_at=row.created_at,
    )


def enter(row: Any) -> Token[Any]:
    """Make claimed ``row`` the current event for the rest of this context (a task that runs
    one receiver and ends: its context is its own), or until :func:`end` is given the token
    returned (what :func:`running` does, without a generator: the worker's loop calls it per
    event)."""
    return _current.set(row)


def end(token: Token[Any]) -> None:
    """Put back the current event as it was before :func:`enter` returned ``token``."""
    _current.reset(token)


@contextlib.contextmanager
def running(row: Any) -> Iterator[None]:
    """Make claimed ``row`` (None: no event) the current event until the block ends."""
    token = _current.set(row)
    try:
        yield
    finally:
        _current.reset(token)
