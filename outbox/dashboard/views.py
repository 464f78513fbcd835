"""The dashboard page of the outbox admin (``admin:outbox_event_dashboard``).

Its figures are cached (Django's default cache) for ``OUTBOX["DASHBOARD_CACHE_SECONDS"]``
per database, window and queue: operators who keep the page open, or reload it, cost the
database one computation per window and queue in that time.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db import router
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.dateformat import format as date_format
from django.utils.timezone import is_aware, localtime
from django.utils.translation import gettext as _

from ..conf import settings
from ..models import Event
from ..registry import registry
from ..routing import DEFAULT_QUEUE
from . import charts
from .queries import WINDOWS, Figures, figures

__all__ = ["cached_figures", "dashboard_view"]

_CACHE_PREFIX = "outbox:dashboard:"


def cached_figures(window_name: str, queue: str | None, using: str) -> Figures:
    """:func:`~outbox.dashboard.queries.figures`, from the cache if computed lately."""
    ident = hashlib.sha256(f"{using}\x00{window_name}\x00{queue}".encode()).hexdigest()[:32]
    key = _CACHE_PREFIX + ident
    found = cache.get(key)
    if found is None:
        found = figures(WINDOWS[window_name], queue, using=using)
        cache.set(key, found, settings.DASHBOARD_CACHE_SECONDS)
    return found


def _label(when: Any, unit: str) -> str:
    return date_format(localtime(when) if is_aware(when) else when, "H:i" if unit == "minute" else "D H:00")


def dashboard_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """Throughput, commit-to-start latency, backlog and receivers of one window and queue.

    Needs the view permission on outbox events (the admin site's own view wrapper sends
    anonymous users to the login page first)."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    window_name = request.GET.get("window")
    if window_name not in WINDOWS:
        window_name = "hour"
    queue = request.GET.get("queue") or None
    if queue is not None:
        queue = queue[: Event._meta.get_field("queue").max_length]
    found = cached_figures(window_name, queue, router.db_for_read(Event))
    window = found.window
    labels = [_label(start, window.unit) for start in found.starts]
    per_minute = window.step.total_seconds() / 60  # the day's buckets are hours
    rate = _("events per minute") if per_minute == 1 else _("events per minute (hourly average)")
    queues = sorted(
        {DEFAULT_QUEUE, *(spec.queue for spec in registry.receivers.values())}
        | ({queue} if queue is not None else set())
    )
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": _("Outbox dashboard"),
        "figures": found,
        "window_name": window_name,
        "windows": [("hour", _("Last hour")), ("day", _("Last day"))],
        "queue": queue,
        "queues": queues,
        "cache_seconds": settings.DASHBOARD_CACHE_SECONDS,
        "p50": charts.duration(found.p50_all),
        "p95": charts.duration(found.p95_all),
        "waiting": found.backlog[-1],
        "throughput_chart": charts.bars(
            [
                charts.Series(_("done"), [n / per_minute for n in found.done], "done"),
                charts.Series(_("failed"), [n / per_minute for n in found.failed], "failed"),
            ],
            labels,
            unit=_("/min"),
            title=rate,
        ),
        "rate_title": rate,
        "latency_chart": charts.lines(
            [
                charts.Series("p50", found.p50, "p50"),
                charts.Series("p95", found.p95, "p95"),
            ],
            labels,
            title=_("commit-to-start latency"),
            fmt=charts.duration,
        ),
        "backlog_chart": charts.lines(
            [charts.Series(_("waiting"), found.backlog, "backlog")], labels, title=_("events waiting")
        ),
        "slowest": [(r, charts.duration(r.p50), charts.duration(r.p95)) for r in found.slowest],
        "failing": found.failing,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/outbox/event/dashboard.html", context)
