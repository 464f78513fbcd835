"""The error a sync ``Signal.send()`` from async code gets, pointing at ``asend``.

Django refuses database queries in a thread whose event loop is running, with
``SynchronousOnlyOperation``. The outbox's proxies meet it before they write or schedule
anything (at the INSERT's cursor, or at ``transaction.on_commit``'s autocommit check), so
nothing of the send is half done; they raise it again as :class:`SendFromAsyncContext`,
whose message says what to call instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.core.exceptions import SynchronousOnlyOperation
from django.dispatch import Signal

from .exceptions import SendFromAsyncContext

__all__ = ["asend_hint"]


@contextmanager
def asend_hint(name: Callable[[], str | None]) -> Iterator[None]:
    """Turn Django's ``SynchronousOnlyOperation`` into :class:`SendFromAsyncContext`;
    ``name()`` names the signal, asked only then."""
    try:
        yield
    except SendFromAsyncContext:
        raise
    except SynchronousOnlyOperation as exc:
        signal_name = name() or "signal"
        if hasattr(Signal, "asend"):
            instead = f"use 'await {signal_name}.asend(...)' (or asend_robust), or call send()"
        else:  # Django 4.2 has no Signal.asend
            instead = "call send()"
        raise SendFromAsyncContext(
            f"{signal_name}.send() was called from async code, where Django refuses database "
            f"queries, so the outbox wrote and scheduled nothing for it: {instead} inside a "
            f"function wrapped with sync_to_async, with transaction.atomic() around your "
            f"writes and the send to make them one transaction ({exc})"
        ) from exc
