"""The operator's admin for outbox events: inspect, search, replay, discard.

Read-only by design: no event can be added, edited or deleted here, since a payload typed
by hand would be run by the worker. The only writes are the replay and discard operations
of :mod:`outbox.operations` (one bulk UPDATE each), behind their own permissions.
Every changelist query is bounded for big tables: newest first on the primary key,
filter choices from the registry (never ``SELECT DISTINCT``), and counts from
:mod:`outbox.monitoring` (estimated on PostgreSQL when large).
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.dateformat import format as date_format
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.text import smart_split, unescape_string_literal
from django.utils.timezone import is_aware, localtime
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from . import admin_filters as filters
from . import admin_log, monitoring, operations, queries
from .dashboard.views import dashboard_view
from .models import Event, EventQuerySet
from .readable import payload_of, readable, time_of
from .serialization import TAG, references

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

__all__ = ["EventAdmin"]

_REFUSALS: dict[str, StrOrPromise] = {
    Event.Status.RUNNING: _("a worker holds it; try again once it finishes or its lease expires"),
    Event.Status.DONE: _("already run"),
    Event.Status.DISCARDED: _("already discarded"),
}
#: References listed on the detail page; a payload naming more shows only the first.
_MAX_REFS = 50
#: How deep in a payload references are looked for on the detail page.
_REFS_DEPTH = 32
#: The largest primary key a bigint holds: "#" followed by more finds no event.
_MAX_ID = 2**63 - 1
_ID = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() accepts "²", which int() refuses


def _pk(ref: dict[str, Any]) -> str:
    """A reference's primary key as text; tagged keys (uuid, ...) hold it in ``v``."""
    pk = ref.get("pk")
    return str(pk.get("v") if isinstance(pk, dict) else pk)


def _short(path: str) -> str:
    """The last two parts of a dotted path, the whole path on hover: keeps the list narrow."""
    return format_html('<span title="{}">{}</span>', path, ".".join(path.rsplit(".", 2)[-2:]))


def _when(value: datetime.datetime | str | None) -> str:
    """A time in the current time zone; naive ones (``USE_TZ = False``) as they are, and the
    database's text of a time Python cannot hold (``-infinity``) as that text."""
    if not value:
        return "-"
    if isinstance(value, str):
        return value
    return date_format(localtime(value) if is_aware(value) else value, "Y-m-d H:i:s")


def _event_id(text: str) -> int | None:
    """The event id ``text`` spells in ASCII digits, if a bigint holds it."""
    return int(text) if _ID.fullmatch(text) and int(text) <= _MAX_ID else None


_KEY_STATES = {"blocks": _("blocks its key"), "blocked": _("waits on its key")}


def _key_state(event: Event) -> str:
    """ "blocks" for a failed keyed event, "blocked" for one parked behind it, else ""."""
    if event.status == Event.Status.FAILED:
        return "blocks"
    if event.status == Event.Status.PENDING and time_of(event, "available_at") == queries.parked():
        return "blocked"
    return ""


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Read-only changelist and detail page, with replay and discard actions and buttons."""

    list_display = (
        "id",
        "signal_name",
        "receiver_name",
        "queue",
        "status_badge",
        "key_state",
        "attempts_display",
        "created",
        "next_attempt",
        "finished",
        "error_line",
    )
    list_filter = ("status", filters.QueueFilter, filters.SignalFilter, filters.ReceiverFilter, "created_at")
    search_fields = ("id",)  # shows the search box; get_search_results() does the searching
    search_help_text = _("#id for one event; or words in its id, receiver, signal, error or payload.")
    # Newest first on the primary key: an index scan with LIMIT, whatever the table's size.
    ordering = ("-id",)
    sortable_by = ("id", "created")
    show_full_result_count = False
    if hasattr(admin, "ShowFacets"):  # Django 5.0+
        # Facet counts ("Show counts") would COUNT the table once per filter choice.
        show_facets = admin.ShowFacets.NEVER
    paginator = monitoring.EstimatedCountPaginator
    list_per_page = 50
    actions = ("replay", "discard")
    fieldsets = (
        (None, {"fields": ("id", "status_badge", "signal", "receiver", "references")}),
        (_("Routing"), {"fields": ("queue", "ordering_key", "key_detail", "dedupe_key")}),
        (
            _("Attempts"),
            {
                "fields": (
                    "attempts_display",
                    "available_at_display",
                    "worker",
                    "created_at_display",
                    "finished_at_display",
                )
            },
        ),
        (_("Last error"), {"fields": ("last_error", "traceback")}),
        (_("Payload"), {"fields": ("payload_json",)}),
        (_("Trace"), {"fields": ("trace_context",)}),  # the sender's span (outbox.tracing)
    )
    readonly_fields = tuple(cast(str, name) for _, options in fieldsets for name in options["fields"])

    class Media:
        css = {"all": ("outbox/admin.css",)}

    # --- permissions: view only, plus the two operations --------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_replay_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return request.user.has_perm("outbox.replay_event")

    def has_discard_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return request.user.has_perm("outbox.discard_event")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        # Timestamps and payload read so that no value in a row can fail the page: an
        # operator must be able to open and discard the row that breaks everything else.
        return readable(super().get_queryset(request))

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Event | None:
        # An id beyond a bigint is no event (Django 4.2 would raise OverflowError on SQLite).
        if from_field is None and _event_id(object_id) is None:
            return None
        return super().get_object(request, object_id, from_field)

    # --- columns ------------------------------------------------------------------------

    @admin.display(description=_("status"))
    def status_badge(self, obj: Event) -> str:
        return format_html(
            '<span class="outbox-status outbox-{}">{}</span>', obj.status, obj.get_status_display()
        )

    @admin.display(description=_("key"))
    def key_state(self, obj: Event) -> str:
        """The ordering key, and whether this event holds it up or waits on it (no query)."""
        if obj.ordering_key is None:
            return ""
        state = _key_state(obj)
        if not state:
            return obj.ordering_key
        return format_html(
            '{} <span class="outbox-key-{}">{}</span>', obj.ordering_key, state, _KEY_STATES[state]
        )

    @admin.display(description=_("ordering"))
    def key_detail(self, obj: Event) -> StrOrPromise:
        """What the key does to this event and the ones after it: one query through
        outbox_event_key."""
        if obj.ordering_key is None:
            return _("unordered")
        same_key = Event.objects.using(obj._state.db).of_key(obj.receiver, obj.ordering_key)
        if obj.status == Event.Status.FAILED:
            waiting = same_key.filter(id__gt=obj.id).pending().count()
            return _(
                "Blocks its key: the %(n)d later event(s) of this receiver and key wait until this one "
                "is replayed or discarded."
            ) % {"n": waiting}
        earlier = same_key.filter(id__lt=obj.id).order_by("id").values_list("id", "status").first()
        if obj.status == Event.Status.PENDING and earlier is not None:
            return _("Waits for event #%(id)d (%(status)s), the earlier event of its key.") % {
                "id": earlier[0],
                "status": earlier[1],
            }
        return _("Runs in id order with the other events of this receiver and key.")

    @admin.display(description=_("signal"))
    def signal_name(self, obj: Event) -> str:
        return _short(obj.signal)

    @admin.display(description=_("receiver"))
    def receiver_name(self, obj: Event) -> str:
        return _short(obj.receiver)

    @admin.display(description=_("attempts"))
    def attempts_display(self, obj: Event) -> str:
        return f"{obj.attempts}/{obj.max_attempts}"

    @admin.display(description=_("created"), ordering="id")
    def created(self, obj: Event) -> str:
        return _when(time_of(obj, "created_at"))

    @admin.display(description=_("next attempt"))
    def next_attempt(self, obj: Event) -> str:
        if obj.status != Event.Status.PENDING or _key_state(obj) == "blocked":
            return "-"  # a parked event's available_at is a marker, not a time
        return _when(time_of(obj, "available_at"))

    @admin.display(description=_("finished"))
    def finished(self, obj: Event) -> str:
        return _when(time_of(obj, "finished_at"))

    @admin.display(description=_("created at"))
    def created_at_display(self, obj: Event) -> str:
        return _when(time_of(obj, "created_at"))

    @admin.display(description=_("available at (next attempt while pending, lease expiry while running)"))
    def available_at_display(self, obj: Event) -> str:
        return _when(time_of(obj, "available_at"))

    @admin.display(description=_("finished at"))
    def finished_at_display(self, obj: Event) -> str:
        return _when(time_of(obj, "finished_at"))

    @admin.display(description=_("last error"))
    def error_line(self, obj: Event) -> str:
        line = obj.last_error.strip().partition("\n")[0]
        if len(line) > 100:
            line = line[:99] + "…"
        return format_html('<span title="{}">{}</span>', obj.last_error, line) if line else ""

    @admin.display(description=_("traceback"))
    def traceback(self, obj: Event) -> str:
        return (
            format_html('<pre class="outbox-pre">{}</pre>', obj.last_traceback) if obj.last_traceback else ""
        )

    @admin.display(description=_("payload"))
    def payload_json(self, obj: Event) -> str:
        payload = payload_of(obj)
        if not payload.too_deep:
            try:
                text = json.dumps(payload.value, indent=2, ensure_ascii=False, sort_keys=True)
                return format_html('<pre class="outbox-pre">{}</pre>', text)
            except RecursionError:  # the pure-Python encoder that indent= needs nests deeper
                pass
        return format_html(
            '<p class="outbox-too-deep">{}</p><pre class="outbox-pre">{}</pre>',
            _("The payload cannot be displayed: nested too deeply for Python. As stored:"),
            payload.text,
        )

    @admin.display(description=_("references"))
    def references(self, obj: Event) -> str:
        """Model instances and classes named in the payload, linked to their admin pages.

        Built from the payload alone (label and primary key): no import, and no query but
        the one that reads the payload's text."""
        items = []
        found = references(payload_of(obj).value, "payload", depth=_REFS_DEPTH)
        for where, ref in itertools.islice(found, _MAX_REFS):
            text = f"{ref['label']} #{_pk(ref)}" if ref[TAG] == "model" else ref["label"]
            url = self._admin_url(ref)
            items.append((where, format_html('<a href="{}">{}</a>', url, text) if url else text))
        return format_html_join("", "<div><code>{}</code>: {}</div>", items) if items else "-"

    def _admin_url(self, ref: dict[str, Any]) -> str | None:
        try:
            app_label, model_name = ref["label"].lower().split(".")
            if ref[TAG] == "modelclass":
                return reverse(f"{self.admin_site.name}:{app_label}_{model_name}_changelist")
            # Quoted as Django's admin quotes keys in its URLs: "/" and "?" in a text key
            # would otherwise make the link point elsewhere ("../../logout").
            return reverse(f"{self.admin_site.name}:{app_label}_{model_name}_change", args=[quote(_pk(ref))])
        except (NoReverseMatch, ValueError, AttributeError):
            return None

    # --- search: id exactly (index), text in receiver, signal, error and payload ---------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Event], search_term: str
    ) -> tuple[QuerySet[Event], bool]:
        if not search_term:
            return queryset, False
        queryset = queryset.alias(payload_text=Cast("payload", TextField()))
        for bit in smart_split(search_term):
            if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
                bit = unescape_string_literal(bit)
            number = _event_id(bit.removeprefix("#"))
            if bit.startswith("#") and number is not None:
                queryset = queryset.filter(pk=number)  # "#123": that event, by its key
                continue
            match = (
                Q(receiver__icontains=bit)
                | Q(signal__icontains=bit)
                | Q(last_error__icontains=bit)
                | Q(payload_text__icontains=bit)
            )
            if number is not None:
                match |= Q(pk=number)
            queryset = queryset.filter(match)
        return queryset, False

    # --- the summary above the list -----------------------------------------------------

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        if request.method == "POST":
            # A forged POST naming an action this user lacks is refused outright; Django
            # alone would answer "No action selected." or, with no action at all, ignore it.
            allowed = self.get_actions(request)
            if any(name and name not in allowed for name in request.POST.getlist("action")):
                raise PermissionDenied
        # A callable: the template computes it only when it renders the list, not for actions.
        extra_context = {**(extra_context or {}), "outbox_summary": monitoring.summary}
        return super().changelist_view(request, extra_context)

    # --- actions ------------------------------------------------------------------------

    @admin.action(description=_("Replay selected events"), permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: EventQuerySet) -> HttpResponse | None:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        hidden = [
            ("action", "replay"),
            ("index", "0"),
            ("select_across", request.POST.get("select_across", "0")),
        ]
        hidden += [(ACTION_CHECKBOX_NAME, pk) for pk in request.POST.getlist(ACTION_CHECKBOX_NAME)]
        return self._replay(request, queryset, hidden, cancel_url=request.get_full_path())

    @admin.action(description=_("Discard selected events"), permissions=["discard"])
    def discard(self, request: HttpRequest, queryset: EventQuerySet) -> None:
        if not self.has_discard_permission(request):
            raise PermissionDenied
        self._discard(request, queryset)

    def _discard(self, request: HttpRequest, queryset: EventQuerySet) -> None:
        logged = admin_log.select(queryset, operations.DISCARDABLE)
        result = operations.discard(queryset)
        self._log(request, logged, result, _("Discarded"))
        self._report(request, result, _("discarded"))

    def _log(
        self,
        request: HttpRequest,
        logged: admin_log.Selection,
        result: operations.ActionResult,
        verb: StrOrPromise,
        outcome: StrOrPromise = "",
    ) -> None:
        admin_log.write(
            request.user.pk,
            logged,
            changed=result.changed,
            selected=result.selected,
            verb=verb,
            outcome=outcome,
        )

    def _replay(
        self, request: HttpRequest, queryset: EventQuerySet, hidden: list[tuple[str, Any]], cancel_url: str
    ) -> HttpResponse | None:
        """Replay, asking first when done events are among them: that runs receivers again."""
        include_done = request.POST.get("include_done")
        if include_done is None:
            done = queryset.done().order_by().count()
            if done:
                context = {
                    **self.admin_site.each_context(request),
                    "opts": self.opts,
                    "title": _("Replay done events?"),
                    "done": done,
                    "hidden": hidden,
                    "cancel_url": cancel_url,
                }
                return TemplateResponse(request, "admin/outbox/event/replay_confirmation.html", context)
        # Read before the UPDATE: afterwards a replayed event no longer matches "failed".
        logged = admin_log.select(queryset, operations.replayable(include_done=include_done == "yes"))
        result = operations.replay(queryset, include_done=include_done == "yes")
        self._log(request, logged, result, _("Replayed"), _("due now"))
        self._report(request, result, _("replayed: due now"))
        return None

    def _report(self, request: HttpRequest, result: operations.ActionResult, done: StrOrPromise) -> None:
        self.message_user(
            request,
            ngettext("%(n)d event %(done)s.", "%(n)d events %(done)s.", result.changed)
            % {"n": result.changed, "done": done},
            messages.SUCCESS if result.changed else messages.WARNING,
        )
        for status, n in sorted(result.refused.items()):
            why = _REFUSALS.get(status, _("not allowed in this state"))
            self.message_user(
                request,
                ngettext(
                    "%(n)d %(status)s event left as it was: %(why)s.",
                    "%(n)d %(status)s events left as they were: %(why)s.",
                    n,
                )
                % {"n": n, "status": status, "why": why},
                messages.WARNING,
            )

    # --- the detail page's buttons ------------------------------------------------------

    def get_urls(self) -> list[Any]:
        views = {"replay": self.replay_view, "discard": self.discard_view}
        dashboard = self.admin_site.admin_view(lambda request: dashboard_view(self, request))
        return [
            path("dashboard/", dashboard, name="outbox_event_dashboard"),
            *(
                path(
                    f"<path:object_id>/{name}/", self.admin_site.admin_view(view), name=f"outbox_event_{name}"
                )
                for name, view in views.items()
            ),
            *super().get_urls(),
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Event | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["can_replay"] = self.has_replay_permission(request) and obj.status != Event.Status.RUNNING
            context["can_discard"] = (
                self.has_discard_permission(request) and obj.status in operations.DISCARDABLE
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _one(self, request: HttpRequest, object_id: str) -> EventQuerySet:
        event = self.get_object(request, object_id)  # None for a malformed or unknown id
        if event is None:
            raise Http404
        return Event.objects.filter(pk=event.pk)

    def _change_url(self, object_id: str) -> str:
        return reverse(f"{self.admin_site.name}:outbox_event_change", args=[object_id])

    @method_decorator(require_POST)
    def replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        response = self._replay(
            request, self._one(request, object_id), [], cancel_url=self._change_url(object_id)
        )
        return response or HttpResponseRedirect(self._change_url(object_id))

    @method_decorator(require_POST)
    def discard_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_discard_permission(request):
            raise PermissionDenied
        self._discard(request, self._one(request, object_id))
        return HttpResponseRedirect(self._change_url(object_id))
