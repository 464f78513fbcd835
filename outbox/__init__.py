"""django-signal-outbox: run Django signal receivers after commit, through a transactional outbox.

Connect a receiver with :func:`receiver` (or :func:`connect`) and it no longer runs inside
the sender's transaction: the send writes an event row in that transaction, and the
worker (``python manage.py run_outbox``) calls the receiver once the row is committed.
"""

from __future__ import annotations

from .current import EventInfo, current_event
from .exceptions import (
    DispatchError,
    OutboxError,
    PayloadTooLarge,
    PermanentFailure,
    RegistrationError,
    RetryAfter,
    SendFromAsyncContext,
    SerializationError,
    UnknownReceiver,
)
from .registry import connect, disconnect, receiver

__all__ = [
    "DispatchError",
    "EventInfo",
    "OutboxError",
    "PayloadTooLarge",
    "PermanentFailure",
    "RegistrationError",
    "RetryAfter",
    "SendFromAsyncContext",
    "SerializationError",
    "UnknownReceiver",
    "connect",
    "current_event",
    "disconnect",
    "receiver",
]

__version__ = "0.2.0"

from . import checks as _checks  # noqa: E402, F401 - outbox.E001 must run even when not installed
