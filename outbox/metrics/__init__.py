"""Prometheus metrics of the outbox (the ``metrics`` extra: ``prometheus_client``).

Two sources, one exposition:

- the worker's own (:mod:`outbox.metrics.instruments`), recorded as each receiver runs:
  events done and failed (counters), receiver duration and start latency (histograms),
  per queue and receiver. ``run_outbox --metrics-port N`` serves one worker's
  (:func:`serve`); with ``PROMETHEUS_MULTIPROC_DIR`` set, every worker writes them there
  and the view adds them up;
- the table's (:mod:`outbox.metrics.collector`), read at scrape time with bounded queries
  through the partial indexes: backlog due now, oldest due age, running, failed (gauges).

:func:`outbox.metrics.views.metrics` serves both to a scraper. Without
``prometheus_client`` nothing here is imported by the worker, which runs unchanged.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

__all__ = ["AVAILABLE", "MetricsUnavailable", "serve"]

try:
    import prometheus_client
except ImportError:  # the metrics extra is not installed
    prometheus_client = None  # type: ignore[assignment]

#: True when ``prometheus_client`` is installed.
AVAILABLE = prometheus_client is not None


class MetricsUnavailable(ImproperlyConfigured):
    """Prometheus metrics need ``prometheus_client``: install ``django-signal-outbox[metrics]``."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve this process's metrics (the worker's counters and histograms, and the client's
    process metrics) over HTTP on ``port``, from a daemon thread; raise
    :class:`MetricsUnavailable` without ``prometheus_client``."""
    if prometheus_client is None:
        raise MetricsUnavailable()
    from . import instruments  # noqa: F401 - registers the worker's metrics, at zero

    prometheus_client.start_http_server(port, addr=addr)
