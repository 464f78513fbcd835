"""Dispatchers: what the worker does with a claimed batch.

The default, :class:`InProcessDispatcher`, calls the receivers in the worker process.
``OUTBOX["DISPATCHER"]`` names another by dotted path to a class (or module with a
``Dispatcher`` class) whose instances have ``dispatch(worker, token, rows)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from django.utils.module_loading import import_string

from .. import queries
from ..conf import settings
from ..exceptions import RegistrationError
from ..execution import Outcome, run_claimed

if TYPE_CHECKING:
    from ..worker import Worker

__all__ = ["Dispatcher", "InProcessDispatcher", "get_dispatcher"]


class Dispatcher(Protocol):
    """Handles one claimed batch. Rows it does not finish stay leased to ``token``: any
    worker reclaims them when the lease expires."""

    def dispatch(self, worker: Worker, token: str, rows: Sequence[queries.Claimed]) -> None: ...


class InProcessDispatcher:
    """Runs the receivers in the worker process, then records the batch."""

    def dispatch(self, worker: Worker, token: str, rows: Sequence[queries.Claimed]) -> None:
        outcome = Outcome([row.id for row in rows])
        # The heartbeat keeps the rows still the batch's until finish() has recorded them
        # (a row already run but not yet marked done must not be reclaimed either), and
        # may hand back the unstarted rest while a receiver runs long.
        worker.hold(token, outcome)
        try:
            run_claimed(worker.database, token, rows, outcome, lambda: worker.stopping)
        finally:
            worker.processed += outcome.started
            done, unstarted = outcome.hand_back()
            worker.finish(token, done, unstarted)
            worker.hold(token, None)


def get_dispatcher(path: str | None = None) -> Dispatcher:
    """The dispatcher named by ``path`` or ``OUTBOX["DISPATCHER"]`` (default: in-process)."""
    path = path or settings.DISPATCHER
    if not path:
        return InProcessDispatcher()
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
