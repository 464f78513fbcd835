"""Running ``async def`` receivers from synchronous code: the worker and on_commit callbacks.

A coroutine function called without being awaited does nothing (Python only warns that it
was "never awaited"), so every place that calls a receiver asks :func:`is_async` first and
awaits it to completion through :func:`run` or :func:`run_after_commit`. A sync receiver
that returns an awaitable anyway (a sync wrapper around an async function) is refused by
:func:`refuse_awaitable`: its event fails rather than being marked done unrun.

:func:`run` goes through asgiref's ``async_to_sync``, called from the worker's thread. The
receiver's coroutine runs on an event loop of its own, and the sync code it awaits with
``sync_to_async`` (all of Django's async ORM: ``aget``, ``acreate``, ...) is sent back to the
calling thread, as asgiref does for thread-sensitive calls. So an async receiver's queries
use the worker's own connections, as a sync receiver's do: the worker's checks for
transactions left open, and its clean-up after a timeout, cover both alike.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction

from .current import running
from .exceptions import OutboxError, PermanentFailure, RetryAfter

__all__ = ["AwaitableReturned", "is_async", "refuse_awaitable", "run", "run_after_commit"]

logger = logging.getLogger("outbox")

# Tasks scheduled by run_after_commit() on a running loop: the loop keeps only weak
# references to its tasks, so one nobody holds could be collected before it finishes.
_scheduled: set[asyncio.Task[Any]] = set()


class AwaitableReturned(OutboxError, TypeError):
    """A receiver that is not an ``async def`` returned an awaitable, which nothing awaits.

    Its body never ran: the awaitable is closed, and the event fails instead of being
    marked done. Make the receiver itself ``async def``, so that it is awaited.
    """


def is_async(func: Callable[..., Any]) -> bool:
    """Whether calling ``func`` returns a coroutine to await: an ``async def`` function, one
    marked with ``markcoroutinefunction``, an object whose ``__call__`` is one, or a
    ``functools.partial`` of any of these."""
    if type(func) is types.FunctionType:
        # Asked once per event, of the few functions receivers are: remembered (a function's
        # code flags do not change; markcoroutinefunction marks it before it is connected).
        known = _is_async_function.get(func)
        if known is None:
            known = _is_async_function[func] = _is_async(func)
        return known
    return _is_async(func)


_is_async_function: dict[types.FunctionType, bool] = {}


def _is_async(func: Callable[..., Any]) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if iscoroutinefunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func):
        return False
    call = getattr(type(func), "__call__", None)  # noqa: B004 - the class's, not the instance's
    return call is not None and iscoroutinefunction(call)


def refuse_awaitable(func: Callable[..., Any], result: Any) -> Any:
    """Return ``result``, unless a sync receiver returned an awaitable: then close it (so
    Python does not warn that it was never awaited) and raise :class:`AwaitableReturned`."""
    if result is None:  # what nearly every receiver returns: no inspection per event
        return None
    if inspect.isasyncgen(result):
        kind = "an async generator"
    elif inspect.isawaitable(result):
        kind = "a coroutine" if inspect.iscoroutine(result) else f"an awaitable ({type(result).__name__})"
        close = getattr(result, "close", None) or getattr(result, "cancel", None)
        if close is not None:
            close()
    else:
        return result
    name = _name(func)
    raise AwaitableReturned(
        f"{name} is not an async function but returned {kind}, which was never awaited: its "
        f"body did not run. Make {name} itself 'async def' so that it is awaited."
    )


def run(func: Callable[..., Any], timeout: float | None, **kwargs: Any) -> Any:
    """Call the async receiver ``func(**kwargs)`` and wait until its coroutine finishes.

    ``timeout`` (seconds) is enforced by cancelling the coroutine: the receiver gets
    ``CancelledError`` at the ``await`` it is waiting on, and this raises
    ``ReceiverTimeout``. Cancellation cannot stop sync code already running, so a blocking
    call inside the receiver (an ORM query in ``sync_to_async`` too) finishes first.
    Must be called from a thread without a running event loop, as the worker's is.
    """
    return async_to_sync(_bounded)(func, timeout, kwargs)


async def _bounded(func: Callable[..., Any], timeout: float | None, kwargs: dict[str, Any]) -> Any:
    if not timeout:
        return await func(**kwargs)
    task = asyncio.ensure_future(func(**kwargs))
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await task
    except asyncio.CancelledError:
        if not expired:
            raise
        # Imported here: execution imports this module, and owns the worker's timeouts.
        from .execution import ReceiverTimeout

        raise ReceiverTimeout(f"the receiver ran longer than its timeout of {timeout}s") from None
    finally:
        timer.cancel()


def run_after_commit(func: Callable[..., Any], **kwargs: Any) -> None:
    """Call an on_commit receiver, async or not, once its transaction has committed.

    Django runs on_commit callbacks in the thread that committed, which is sync code: there
    an async receiver is run to completion with ``async_to_sync``; from a thread that is
    itself running inside ``sync_to_async`` (an async view's ``sync_to_async`` function
    around ``transaction.atomic()``, or ``Signal.asend``'s sync receivers) asgiref runs it on
    that outer event loop, and the commit waits for it. Only a thread whose own event loop
    is running cannot wait (that would block the loop): there, which is only possible with
    ``DJANGO_ALLOW_ASYNC_UNSAFE``, the receiver is scheduled on the loop as a task, and a
    failure is logged as Django logs a failing robust on_commit callback.

    There is no event row here: ``outbox.current_event()`` is None (even when the commit
    happens inside a deferred receiver), and a receiver raising ``RetryAfter`` or
    ``PermanentFailure`` has nothing to steer, so that is only logged.
    """
    with running(None):
        try:
            if not is_async(func):
                refuse_awaitable(func, func(**kwargs))
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                async_to_sync(func)(**kwargs)
                return
            # Created inside running(None): the task copies this context, not the caller's.
            task = loop.create_task(func(**kwargs))
        except (RetryAfter, PermanentFailure) as exc:
            _steering_ignored(_name(func), exc)
            return
    _scheduled.add(task)
    task.add_done_callback(functools.partial(_finished, _name(func)))


def _steering_ignored(name: str, exc: BaseException) -> None:
    logger.warning(
        "on_commit receiver %s raised %s (%s): on_commit receivers have no event to retry or "
        "fail, so this is only logged",
        name,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )


def _finished(name: str, task: asyncio.Task[Any]) -> None:
    _scheduled.discard(task)
    if task.cancelled():
        logger.error("on_commit receiver %s was cancelled before it finished", name)
        return
    exc = task.exception()
    if isinstance(exc, (RetryAfter, PermanentFailure)):
        _steering_ignored(name, exc)
    elif exc is not None:
        logger.error("Error calling %s in on_commit() (%s).", name, exc, exc_info=exc)


def _name(func: Callable[..., Any]) -> str:
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if qualname is None:
        return repr(func)
    return f"{module}.{qualname}" if module else qualname
