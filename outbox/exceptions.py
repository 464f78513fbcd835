"""Exceptions raised by django-signal-outbox. All derive from :class:`OutboxError`."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured, SynchronousOnlyOperation

__all__ = [
    "DispatchError",
    "OutboxError",
    "PayloadTooLarge",
    "RegistrationError",
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


class SendFromAsyncContext(OutboxError, SynchronousOnlyOperation):
    """A sync ``send()`` from async code reached a deferred or on_commit receiver.

    Django refuses the database there (``SynchronousOnlyOperation``, which this is too), so
    nothing was written or scheduled. Send with ``await signal.asend(...)`` (Django 5.0+),
    or from a function wrapped with ``sync_to_async``.
    """
