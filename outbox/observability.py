"""What a worker reports about the receivers it runs: Prometheus metrics and trace spans.

The worker's code calls three things, in every way of running receivers (the sequential
loop of :mod:`outbox.execution`, the threads and event loop of :mod:`outbox.concurrent`, a
relayed task): :func:`watching` around each receiver call, :func:`done` where a success is
noted, :func:`failed` where a failed attempt is recorded. Which of ``prometheus_client``
(:mod:`outbox.metrics`) and ``opentelemetry-api`` (:mod:`outbox.tracing`) are installed is
decided once, at import: with neither, :func:`watching` returns a shared object that does
nothing and the others are empty functions, so a worker without them runs as before.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from django.utils import timezone

from . import tracing
from .metrics import AVAILABLE as METRICS

__all__ = ["Watch", "done", "failed", "watching"]

if METRICS:
    from .metrics import instruments

_ON = METRICS or tracing.AVAILABLE


class Watch:
    """One receiver call being observed: its span while tracing, its duration and start
    latency while counting. A context manager around the call (what it raises is the
    attempt's failure), or :meth:`begin` and :meth:`end` where the failure is caught inside
    (an async receiver's task). Either way in one thread or task: the span is current there."""

    __slots__ = ("ready", "span", "started")

    def __init__(self, ready: Any) -> None:
        self.ready = ready
        self.span: Any = None
        self.started = 0.0

    def __enter__(self) -> Watch:
        self.begin()
        return self

    def __exit__(self, kind: Any, failure: BaseException | None, traceback: Any) -> None:
        self.end(failure)

    def begin(self) -> None:
        """The receiver is about to be called."""
        row = self.ready.row
        if METRICS and row.attempts == 1 and row.created_at is not None and not self.ready.spec.delay:
            # From the send to the first start; a retry's wait is its backoff, not latency.
            created = row.created_at
            now = datetime.datetime.now(created.tzinfo) if created.tzinfo else timezone.now()
            _series(row).latency.observe(max((now - created).total_seconds(), 0.0))
        if tracing.AVAILABLE:
            self.span = tracing.start(row)
        self.started = time.perf_counter()

    def end(self, failure: BaseException | None) -> None:
        """The receiver returned (``failure``: what it raised, or None)."""
        if METRICS:
            _series(self.ready.row).duration.observe(time.perf_counter() - self.started)
        if self.span is not None:
            tracing.finish(self.span, failure)


class _Unwatched:
    """What :func:`watching` returns when neither library is installed: does nothing."""

    __slots__ = ()

    def __enter__(self) -> _Unwatched:
        return self

    def __exit__(self, *args: Any) -> None:
        return None

    def begin(self) -> None:
        """Nothing to do."""

    def end(self, failure: BaseException | None) -> None:
        """Nothing to do."""


_UNWATCHED = _Unwatched()


def watching(ready: Any) -> Watch | _Unwatched:
    """The :class:`Watch` of one call of a prepared receiver (:class:`outbox.execution.Prepared`);
    a shared object that does nothing when neither library is installed."""
    return Watch(ready) if _ON else _UNWATCHED


def _nothing(*args: Any) -> None:
    return None


class _Series:
    """The labelled series of one queue and receiver, looked up once (``labels()`` costs
    about as much as the observation itself)."""

    __slots__ = ("done", "duration", "failed", "latency", "retried")

    def __init__(self, queue: str, receiver: str) -> None:
        self.done = instruments.DONE.labels(queue, receiver)
        self.failed = instruments.FAILED.labels(queue, receiver, "true")
        self.retried = instruments.FAILED.labels(queue, receiver, "false")
        self.duration = instruments.DURATION.labels(queue, receiver)
        self.latency = instruments.LATENCY.labels(queue, receiver)


_all_series: dict[tuple[str, str], _Series] = {}


def _series(row: Any) -> _Series:
    key = (row.queue, row.receiver)
    series = _all_series.get(key)
    if series is None:
        series = _all_series.setdefault(key, _Series(*key))
    return series


def _done(row: Any) -> None:
    _series(row).done.inc()


def _failed(row: Any, final: bool) -> None:
    series = _series(row)
    (series.failed if final else series.retried).inc()


#: Count a claimed row whose receiver succeeded.
done = _done if METRICS else _nothing
#: Count a failed attempt of a claimed row (``final``: failed for good).
failed = _failed if METRICS else _nothing
