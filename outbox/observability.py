"""What a worker reports about the receivers it runs: Prometheus metrics and trace spans.

The worker's code calls four functions, in every way of running receivers (the sequential
loop of :mod:`outbox.execution`, the threads and event loop of :mod:`outbox.concurrent`, a
relayed task): :func:`begin` and :meth:`Watch.end` around each receiver call, :func:`done`
where a success is noted, :func:`failed` where a failed attempt is recorded. Which of
``prometheus_client`` (:mod:`outbox.metrics`) and ``opentelemetry-api``
(:mod:`outbox.tracing`) are installed is decided once, at import: with neither, :func:`begin`
returns None and the others do nothing, so a worker without them runs as before.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from django.utils import timezone

from . import tracing
from .metrics import AVAILABLE as METRICS

__all__ = ["Watch", "begin", "done", "failed"]

if METRICS:
    from .metrics import instruments


class Watch:
    """One receiver call being observed: its start, and its span while tracing."""

    __slots__ = ("row", "span", "started")

    def __init__(self, row: Any, span: Any, started: float) -> None:
        self.row, self.span, self.started = row, span, started

    def end(self, failure: BaseException | None) -> None:
        """The receiver returned (``failure``: what it raised, or None): close its span and
        observe its duration. Call it from the thread or task that called :func:`begin`."""
        if self.span is not None:
            tracing.finish(self.span, failure)
        if METRICS:
            _series(self.row).duration.observe(time.perf_counter() - self.started)


def _begin(ready: Any) -> Watch:
    row = ready.row
    if METRICS and row.attempts == 1 and row.created_at is not None and not ready.spec.delay:
        # From the send to the first start; a retry's wait is its backoff, not latency.
        created = row.created_at
        now = datetime.datetime.now(created.tzinfo) if created.tzinfo else timezone.now()
        latency = max((now - created).total_seconds(), 0.0)
        _series(row).latency.observe(latency)
    span = tracing.start(row) if tracing.AVAILABLE else None
    return Watch(row, span, time.perf_counter())


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


#: Start observing the call of a prepared receiver (:class:`outbox.execution.Prepared`),
#: making its span current; None when neither library is installed.
begin = _begin if METRICS or tracing.AVAILABLE else _nothing
#: Count a claimed row whose receiver succeeded.
done = _done if METRICS else _nothing
#: Count a failed attempt of a claimed row (``final``: failed for good).
failed = _failed if METRICS else _nothing
