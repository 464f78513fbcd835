"""The worker's metrics, in ``prometheus_client``'s default registry.

Imported only when ``prometheus_client`` is installed (:mod:`outbox.observability`). With
``PROMETHEUS_MULTIPROC_DIR`` set in the environment before the process starts, the client
keeps these values in files there, which :func:`outbox.metrics.views.metrics` adds up over
every worker process (``prometheus_client``'s multiprocess mode).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["DONE", "DURATION", "FAILED", "LATENCY"]

_LABELS = ("queue", "receiver")

#: Events whose receiver returned (counted by the worker that ran it).
DONE = Counter("outbox_events_done", "Events whose receiver succeeded.", _LABELS)

#: Failed attempts; ``final="true"`` when the event was marked failed for good, "false"
#: when a retry was scheduled.
FAILED = Counter(
    "outbox_events_failed",
    "Failed attempts of events (final: failed for good, no retry left).",
    (*_LABELS, "final"),
)

#: Seconds each receiver call took.
DURATION = Histogram(
    "outbox_receiver_duration_seconds",
    "Seconds a receiver call took.",
    _LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)

#: Seconds from the send (the event's created_at) to the start of its first attempt.
LATENCY = Histogram(
    "outbox_start_latency_seconds",
    "Seconds from the send to the start of the first attempt (delayed receivers excluded).",
    _LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
