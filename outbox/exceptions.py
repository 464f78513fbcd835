"""Exceptions raised by django-signal-outbox. All derive from :class:`OutboxError`."""

from __future__ import annotations

import datetime
import math
from numbers import Real

from django.core.exceptions import ImproperlyConfigured, SynchronousOnlyOperation

__all__ = [
    "DispatchError",
    "LeaseLost",
    "OutboxError",
    "PayloadTooLarge",
    "PermanentFailure",
    "RegistrationError",
    "RetryAfter",
    "SendFromAsyncContext",
    "SerializationError",
    "UnknownReceiver",
]


class OutboxError(Exception):
    """Base class of every error raised by the outbox."""


class SerializationError(OutboxError, TypeError):
    """A signal argument cannot be stored as JSON.

    Raised at send time, inside the sender's transaction, so nothing is written and the
    transaction can still be rolled back.
    """


class PayloadTooLarge(SerializationError):
    """The encoded arguments exceed ``OUTBOX["MAX_PAYLOAD_BYTES"]``."""


class RegistrationError(OutboxError, ImproperlyConfigured):
    """A receiver cannot be connected: not importable by dotted path, or a conflict."""


class DispatchError(OutboxError):
    """An event row cannot be dispatched: its payload or references cannot be decoded."""


class UnknownReceiver(DispatchError):
    """An event names a receiver or signal that is not registered in this process."""


class LeaseLost(DispatchError):
    """An ``atomic=True`` receiver finished after its worker lost the event's lease (the
    worker was frozen or cut off, and another worker reclaimed the event, or an operator
    replayed or discarded it): the fenced "done" matched no row, so the receiver's
    transaction was rolled back. The event is left to whoever holds it now."""


class SendFromAsyncContext(OutboxError, SynchronousOnlyOperation):
    """A sync ``send()`` from async code reached a deferred or on_commit receiver.

    Django refuses the database there (``SynchronousOnlyOperation``, which this is too), so
    nothing was written or scheduled. Send with ``await signal.asend(...)`` (Django 5.0+),
    or from a function wrapped with ``sync_to_async``.
    """


class RetryAfter(OutboxError):
    """Raised by a deferred receiver: try this event again, not before ``seconds`` from now.

    ``seconds`` is a number or a ``timedelta``, measured from the failed attempt by the
    clock of leases (the database's on PostgreSQL). The wait is never shorter; jitter adds
    up to a tenth of it (at most a minute) so that events told to wait together do not all
    come back in the same instant. A request longer than
    ``OUTBOX["RETRY_AFTER_MAX_SECONDS"]`` is clamped to it, with a warning. The attempt
    counts: on the event's last attempt it is ``failed`` like any other failure.
    """

    def __init__(self, seconds: float | datetime.timedelta, message: str = "") -> None:
        if isinstance(seconds, datetime.timedelta):
            seconds = seconds.total_seconds()
        if isinstance(seconds, bool) or not isinstance(seconds, Real) or not math.isfinite(seconds):
            raise TypeError(f"RetryAfter takes a finite number of seconds or a timedelta, not {seconds!r}")
        if seconds < 0:
            raise ValueError(f"RetryAfter takes a wait of 0 seconds or more, not {seconds!r}")
        self.seconds: float = float(seconds)
        self.message: str = message
        super().__init__(seconds, message)

    def __str__(self) -> str:
        wait = f"retry after {self.seconds:g}s"
        return f"{wait}: {self.message}" if self.message else wait


class PermanentFailure(OutboxError):
    """Raised by a deferred receiver: this event will never succeed, do not try it again.

    The event is ``failed`` at once, whatever attempts it has left, with this exception's
    message in ``last_error``; a keyed event blocks its key as any final failure does.
    Replaying it (``outbox_replay``) runs it again.
    """
