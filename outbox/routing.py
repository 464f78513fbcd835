"""Where an event goes: its queue, named at registration, and its ordering and dedupe keys,
computed at send time.

A queue is a name a worker drains (``run_outbox --queue NAME``). An ordering key groups
the events of one receiver that must run one at a time, in the order they were written:
``ordering_key=func`` is called in the sender's process, as ``func(sender, signal=...,
**kwargs)``, the arguments a receiver gets, and returns a ``str``, an ``int`` or ``None``
(unordered). What the claim does with the key is in :mod:`outbox.queries`. A
``dedupe_key=func`` is called the same way and returns the same kinds of key: while an event
of the receiver with that key is pending and never claimed, a new send writes no row.
"""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Callable
from typing import Any

from . import limits
from .exceptions import RegistrationError, SerializationError

__all__ = [
    "DEFAULT_QUEUE",
    "MAX_KEY_LENGTH",
    "check_delay",
    "check_queue",
    "ordering_key",
    "valid_queue",
    "wanted",
]

#: The queue of receivers that name none, and of rows written before queues existed.
DEFAULT_QUEUE = "default"
#: The width of ``Event.ordering_key``.
MAX_KEY_LENGTH = 255
# Identifier-like, so a name is safe on a command line, in a URL and in a log line.
_QUEUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
QUEUE_RULE = "1 to 64 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
#: A delay is added to "now" in a timestamp column: ten years at most, as timeouts are.
DELAY = limits.Range(float, 0, limits.MAX_SECONDS, unit="seconds")


def valid_queue(name: Any) -> bool:
    """True if ``name`` may name a queue."""
    return isinstance(name, str) and _QUEUE.fullmatch(name) is not None


def check_queue(name: Any) -> str:
    """Return ``name`` if it may name a queue; else raise :class:`RegistrationError`."""
    if not valid_queue(name):
        raise RegistrationError(f"queue must be {QUEUE_RULE}, not {name!r}")
    return name


def ordering_key(
    func: Callable[..., Any],
    receiver: str,
    sender: Any,
    kwargs: dict[str, Any],
    option: str = "ordering_key",
) -> str | None:
    """Call a receiver's ``ordering_key`` (or other ``option``'s) function for one send;
    return the key to store.

    An ``int`` is stored as its decimal string (so ``5`` and ``"5"`` are one key). Any
    other result, or a string the column cannot hold, raises :class:`SerializationError`
    before anything is written, so the sender's transaction is untouched.
    """
    key = func(sender, **kwargs)
    if key is None:
        return None
    if isinstance(key, str):
        key = str(key)  # a subclass (SafeString) stored as the plain string
    elif isinstance(key, int) and not isinstance(key, bool):
        key = str(key) if abs(key) < 10**MAX_KEY_LENGTH else key  # str() of a huge int is slow
    else:
        raise SerializationError(
            f"the {option} of {receiver} returned {type(key).__name__} {key!r:.80}; "
            f"it must return a str, an int or None"
        )
    if isinstance(key, int) or len(key) > MAX_KEY_LENGTH:
        raise SerializationError(
            f"the {option} of {receiver} returned a key longer than {MAX_KEY_LENGTH} characters"
        )
    if "\x00" in key:
        raise SerializationError(f"the {option} of {receiver} returned a key with a NUL character")
    return key


def check_delay(delay: Any) -> float | None:
    """A receiver's ``delay=`` (seconds, or a ``timedelta``) as seconds, None for none; else
    raise :class:`RegistrationError` at registration, never a bad timestamp at send."""
    seconds = delay.total_seconds() if isinstance(delay, datetime.timedelta) else delay
    if seconds is not None and not DELAY.holds(seconds):
        raise RegistrationError(f"delay must be {DELAY.describe()} or a timedelta as long, not {delay!r}")
    return float(seconds) if seconds else None


def wanted(when: Callable[..., Any], receiver: str, sender: Any, kwargs: dict[str, Any]) -> bool:
    """Call a receiver's ``when`` predicate for one send: true if the send is for it.

    It runs before any SQL of the send, so an exception it raises leaves the sender's
    transaction as it was. The exception propagates unchanged (the user's own error, for
    the user's own handlers) with a note naming the receiver.
    """
    try:
        return bool(when(sender, **kwargs))
    except Exception as exc:
        note = f"raised by the when= predicate of outbox receiver {receiver}"
        if sys.version_info >= (3, 11):
            exc.add_note(note)
        else:  # PEP 678's fallback: the same __notes__, which 3.10's tracebacks do not print
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]
        raise
