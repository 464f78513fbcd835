"""The dashboard's figures: a few aggregate queries per page view, each bounded by a window.

Every query reads the events table through a partial index, never the whole table:

- finished events (throughput, commit-to-start latency, receiver durations and failures,
  and the finished half of the backlog): ``outbox_event_finished`` (status, finished_at,
  id), one range per status from the start of the window. The filter spells the index's
  condition exactly (``EventQuerySet.finished()``), so that SQLite can use the partial index too.
- unfinished events (the other half of the backlog): ``outbox_event_due``, or
  ``outbox_event_queue_due`` for one queue; their number is the backlog itself.

So a page view reads the rows that finished in the window and the rows still waiting, not
the table: a day of history costs what that day's events cost. Buckets are made by the
database (``Trunc``), percentiles estimated from counts per latency bucket (as Prometheus'
``histogram_quantile`` does), so no query returns more than a few thousand rows.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db.models import (
    Case,
    DateTimeField,
    DurationField,
    Expression,
    ExpressionWrapper,
    F,
    Value,
    When,
)
from django.db.models.functions import Greatest, Trunc

from .. import queries
from ..models import Event

__all__ = [
    "BOUNDS",
    "WINDOWS",
    "Figures",
    "Receiver",
    "Window",
    "figures",
    "quantile",
]

_UTC = datetime.timezone.utc


@dataclass(frozen=True)
class Window:
    """A span of history shown as ``buckets`` buckets of ``unit`` (a ``Trunc`` kind)."""

    name: str
    unit: str
    step: datetime.timedelta
    buckets: int


#: The windows a page can show: the last hour by minute, the last day by hour.
WINDOWS = {
    "hour": Window("hour", "minute", datetime.timedelta(minutes=1), 60),
    "day": Window("day", "hour", datetime.timedelta(hours=1), 24),
}

#: Upper bounds (seconds) of the latency and duration buckets; the last bucket is unbounded.
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


@dataclass
class Receiver:
    """One receiver's finished events in the window."""

    name: str
    done: int = 0
    failed: int = 0
    #: Events per duration bucket (:data:`BOUNDS`), done and failed together.
    durations: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))

    @property
    def p50(self) -> float | None:
        """Median duration of its last attempts, in seconds (None: none timed)."""
        return quantile(self.durations, 0.5)

    @property
    def p95(self) -> float | None:
        """95th percentile duration of its last attempts, in seconds (None: none timed)."""
        return quantile(self.durations, 0.95)

    @property
    def failure_rate(self) -> float:
        """Failed for good out of finished (done or failed), from 0 to 1."""
        return self.failed / (self.done + self.failed) if self.done + self.failed else 0.0


@dataclass
class Figures:
    """What the dashboard draws for one window and queue (None: every queue)."""

    window: Window
    queue: str | None
    now: datetime.datetime
    #: Start of each bucket; the last one holds ``now``.
    starts: list[datetime.datetime]
    done: list[int]
    failed: list[int]
    #: Commit-to-start latency (seconds) per bucket, of events finished in it; None: none.
    p50: list[float | None]
    p95: list[float | None]
    #: The same over the whole window.
    p50_all: float | None
    p95_all: float | None
    #: Events waiting (pending or running) at the end of each bucket; the last is now.
    backlog: list[int]
    receivers: list[Receiver]

    @property
    def slowest(self) -> list[Receiver]:
        """Receivers by their 95th percentile duration, slowest first (five)."""
        timed = [r for r in self.receivers if r.p95 is not None]
        return sorted(timed, key=lambda r: (-(r.p95 or 0), r.name))[:5]

    @property
    def failing(self) -> list[Receiver]:
        """Receivers with failed events, most failures first (five)."""
        return sorted((r for r in self.receivers if r.failed), key=lambda r: (-r.failed, r.name))[:5]

    @property
    def total_done(self) -> int:
        """Events done in the window."""
        return sum(self.done)

    @property
    def total_failed(self) -> int:
        """Events failed for good in the window."""
        return sum(self.failed)


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of values counted per bucket of :data:`BOUNDS` (the last
    unbounded), interpolated linearly within its bucket; None if nothing was counted.

    A quantile in the unbounded bucket is reported as the largest bound, as Prometheus'
    ``histogram_quantile`` does."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(BOUNDS):
                return float(BOUNDS[-1])
            low = 0.0 if i == 0 else BOUNDS[i - 1]
            return low + (BOUNDS[i] - low) * (rank - seen) / n
        seen += n
    return float(BOUNDS[-1])


def _bucket_of(seconds: F | ExpressionWrapper) -> Case:
    """The index in :data:`BOUNDS` of a duration expression (``len(BOUNDS)``: above all)."""
    whens = [
        When(**{"span__lt": datetime.timedelta(seconds=bound)}, then=Value(i))
        for i, bound in enumerate(BOUNDS)
    ]
    return Case(*whens, default=Value(len(BOUNDS)))


def _span(later: str, earlier: str) -> ExpressionWrapper:
    return ExpressionWrapper(F(later) - F(earlier), output_field=DurationField())


def figures(window: Window, queue: str | None = None, *, using: str = "default") -> Figures:
    """Compute the figures of ``window`` (for ``queue``, or every queue) on ``using``.

    Three queries (and the clock's, on PostgreSQL): two over the events finished in the
    window, one over those waiting now (see the module docstring for their indexes)."""
    now = queries.database_now(using)
    last = _truncate(now, window)
    since = last - window.step * (window.buckets - 1)
    starts = [since + window.step * i for i in range(window.buckets)]
    events = Event.objects.using(using).order_by()
    if queue is not None:
        events = events.in_queues(queue)
    # The index's condition, alone as a term, and the window's start: outbox_event_finished.
    finished = events.finished().filter(finished_at__gte=since)
    ran = finished.with_status(Event.Status.DONE, Event.Status.FAILED)

    def index(when: datetime.datetime | None) -> int:
        if when is None:
            return 0
        if when.tzinfo is None and since.tzinfo is not None:
            when = when.replace(tzinfo=_UTC)
        return min(max(int((when - since) / window.step), 0), window.buckets - 1)

    def bucket(name: str | Expression) -> Trunc:
        return Trunc(name, window.unit, output_field=DateTimeField(), tzinfo=_UTC)

    # Backlog at the end of bucket i: events created before it ended and not finished by
    # then; those created before the window count from its first bucket. +n in arrived[]
    # at the bucket an event came in, -n at the one it finished in; summed up below.
    from_bucket = bucket(Greatest("created_at", Value(since, output_field=DateTimeField())))
    arrived = [0] * (window.buckets + 1)

    # 1. Finished events per (finished bucket, created bucket, status, latency bucket):
    # throughput, latency and the finished half of the backlog in one reading of the window.
    done, failed = [0] * window.buckets, [0] * window.buckets
    latency = [[0] * (len(BOUNDS) + 1) for _ in starts]
    rows = (
        finished.alias(span=_span("started_at", "created_at"))
        .annotate(
            at=bucket("finished_at"),
            c=from_bucket,
            lat=Case(When(started_at=None, then=Value(-1)), default=_bucket_of(F("span"))),
        )
        .count_by("at", "c", "status", "lat")
    )
    for (at, created, status, lat), n in rows.items():
        i, c = index(at), index(created)
        if c < i:  # came in an earlier bucket: waiting at the ends of buckets c to i - 1
            arrived[c] += n
            arrived[i] -= n
        if status == Event.Status.DISCARDED:
            continue
        (done if status == Event.Status.DONE else failed)[i] += n
        if lat >= 0:
            latency[i][lat] += n
    overall = [sum(column) for column in zip(*latency, strict=True)]

    # 2. Receivers: finished events and durations per receiver.
    by_name: dict[str, Receiver] = {}
    per_receiver = (
        ran.alias(span=_span("finished_at", "started_at"))
        .annotate(took=Case(When(started_at=None, then=Value(-1)), default=_bucket_of(F("span"))))
        .count_by("receiver", "status", "took")
    )
    for (name, status, took), n in per_receiver.items():
        receiver = by_name.setdefault(name, Receiver(name))
        if status == Event.Status.DONE:
            receiver.done += n
        else:
            receiver.failed += n
        if took >= 0:
            receiver.durations[took] += n

    # 3. The waiting half of the backlog: events pending or running now, by arrival.
    waiting = events.unfinished().annotate(c=from_bucket).count_by("c")
    for (created,), n in waiting.items():
        arrived[index(created)] += n
    backlog, level = [], 0
    for i in range(window.buckets):
        level += arrived[i]
        backlog.append(level)

    return Figures(
        window=window,
        queue=queue,
        now=now,
        starts=starts,
        done=done,
        failed=failed,
        p50=[quantile(counts, 0.5) for counts in latency],
        p95=[quantile(counts, 0.95) for counts in latency],
        p50_all=quantile(overall, 0.5),
        p95_all=quantile(overall, 0.95),
        backlog=backlog,
        receivers=sorted(by_name.values(), key=lambda r: r.name),
    )


def _truncate(now: datetime.datetime, window: Window) -> datetime.datetime:
    """The start of the bucket holding ``now`` (UTC-aligned, as the queries' ``Trunc``)."""
    seconds = window.step.total_seconds()
    aware = now.tzinfo is not None
    moment = now.astimezone(_UTC) if aware else now
    epoch = datetime.datetime(1970, 1, 1, tzinfo=_UTC if aware else None)
    return epoch + datetime.timedelta(
        seconds=math.floor((moment - epoch).total_seconds() / seconds) * seconds
    )
