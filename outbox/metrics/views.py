"""The metrics endpoint, to mount in a URLconf::

    import outbox.metrics.views

    urlpatterns = [path("outbox/metrics", outbox.metrics.views.metrics), ...]

It serves, in Prometheus's text format, the table's gauges (:mod:`outbox.metrics.collector`)
and the worker metrics: with ``PROMETHEUS_MULTIPROC_DIR`` set, every process's, added up
from that directory (``prometheus_client``'s multiprocess mode); else this process's own.
Only to staff users, a request bearing ``OUTBOX["METRICS_TOKEN"]``, or one from
``OUTBOX["METRICS_ALLOWED_IPS"]``; anyone else gets 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.cache import never_cache

from . import AVAILABLE, MetricsUnavailable

if not AVAILABLE:
    raise MetricsUnavailable()

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from ..conf import settings
from . import instruments
from .collector import DatabaseCollector

__all__ = ["allowed", "exposition", "metrics"]


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """The outbox's metrics in Prometheus's text format, to those :func:`allowed` lets in."""
    if not allowed(request):
        return HttpResponseForbidden("outbox metrics: staff, the metrics token or an allowed address only\n")
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


def allowed(request: HttpRequest) -> bool:
    """Whether ``request`` may read the metrics: an active staff user, the bearer token of
    ``OUTBOX["METRICS_TOKEN"]``, or a client address in ``OUTBOX["METRICS_ALLOWED_IPS"]``."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    networks = settings.metrics_networks
    if networks:
        try:
            address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            address = None
        if address is not None and any(address in network for network in networks):
            return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def exposition(database: str | None = None) -> bytes:
    """The text a scrape gets: the gauges of ``database`` (default: the outbox's) and the
    worker metrics (see the module docstring)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(database or settings.database))
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry.register(_ThisProcess())
    return generate_latest(registry)


class _ThisProcess:
    """The worker metrics this process recorded (a worker run in it, as tests do)."""

    def collect(self) -> Iterator[Any]:
        for metric in (instruments.DONE, instruments.FAILED, instruments.DURATION, instruments.LATENCY):
            yield from metric.collect()
