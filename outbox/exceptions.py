"""Exceptions raised by django-signal-outbox. All derive from :class:`OutboxError`."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "DispatchError",
    "OutboxError",
    "PayloadTooLarge",
    "RegistrationError",
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
