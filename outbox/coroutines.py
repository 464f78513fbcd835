"""Async receivers: telling them apart from sync ones."""

from __future__ import annotations

import functools
from typing import Any

from asgiref.sync import iscoroutinefunction

__all__ = ["is_async"]


def is_async(func: Any) -> bool:
    """True if calling ``func`` returns an awaitable to run: a coroutine function, a
    ``functools.partial`` of one, or an object whose ``__call__`` is one."""
    while isinstance(func, functools.partial):
        func = func.func
    if iscoroutinefunction(func):
        return True
    call = getattr(type(func), "__call__", None)  # noqa: B004 - the method, not callable()
    return call is not None and not isinstance(func, type) and iscoroutinefunction(call)
