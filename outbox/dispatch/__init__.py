"""Dispatchers: what the worker does with a claimed batch.

The default, :class:`InProcessDispatcher`, calls the receivers in the worker process: one
after another at concurrency 1, or through a :class:`outbox.concurrent.Runner` of N at
once. ``OUTBOX["DISPATCHER"]`` names another by dotted path to a class (or module with a
``Dispatcher`` class) whose instances have ``dispatch(claim) -> int``; ``stop()`` and
``close()`` are called if they have them.
"""

from __future__ import annotations

import inspect
from typing import Protocol

from django.utils.module_loading import import_string

from ..claims import Claim
from ..conf import settings
from ..exceptions import RegistrationError
from ..execution import run_claimed

__all__ = ["Dispatcher", "InProcessDispatcher", "get_dispatcher"]


class Dispatcher(Protocol):
    """Handles one claimed batch and returns how many of its events it handled. Rows it
    neither finishes nor hands back stay leased to the claim's token: any worker reclaims
    them when the lease expires."""

    def dispatch(self, claim: Claim) -> int: ...


class InProcessDispatcher:
    """Runs the receivers in the worker process and records the batch.

    ``concurrency`` 1 runs a batch's rows one after another in the calling thread, as the
    worker always has (SIGALRM timeouts included); more hands them to a
    :class:`~outbox.concurrent.Runner`, which runs up to that many at once.
    """

    def __init__(self, concurrency: int = 1) -> None:
        self.concurrency = concurrency
        self.stopping = False
        #: One after another, leave a batch's successes owed by its claim, for the worker's
        #: next claim to write done in its own statement (set by :class:`~outbox.Worker`).
        self.defer_done = False
        self._runner = None
        if concurrency > 1:
            from ..concurrent import Runner

            self._runner = Runner(concurrency)

    def dispatch(self, claim: Claim) -> int:
        """Run (or, concurrently, start) the claim's rows; return how many were started."""
        if self._runner is not None:
            return self._runner.feed(claim, lambda: self.stopping)
        try:
            run_claimed(claim, lambda: self.stopping)
        finally:
            claim.finish(defer_done=self.defer_done)
        return claim.started

    def stop(self) -> None:
        """Start nothing more (the receivers in hand finish)."""
        self.stopping = True
        if self._runner is not None:
            self._runner.stop()

    def busy(self) -> bool:
        """True while receivers started by :meth:`dispatch` are still in hand."""
        return self._runner is not None and self._runner.busy()

    def close(self) -> None:
        """Wait for the receivers in hand (each bounded by its timeout) and record them."""
        if self._runner is not None:
            self._runner.close()


def get_dispatcher(path: str | None = None, concurrency: int = 1) -> Dispatcher:
    """The dispatcher named by ``path`` or ``OUTBOX["DISPATCHER"]`` (default: in-process, at
    ``concurrency``)."""
    path = path or settings.DISPATCHER
    if not path:
        return InProcessDispatcher(concurrency)
    try:
        target = import_string(path)
    except ImportError:
        target = None
    # A module path names its Dispatcher class. import_string() finds a submodule as an
    # attribute of its package once something imported it, so test for a module too.
    if target is None or inspect.ismodule(target):
        try:
            target = import_string(f"{path}.Dispatcher")
        except ImportError as exc:
            raise RegistrationError(f'OUTBOX["DISPATCHER"] = {path!r} cannot be imported: {exc}') from exc
    return target()
