"""The outbox admin's queue, signal and receiver filters: their choices read no table.

Django's field filters would ``SELECT DISTINCT`` the queue, signal and receiver columns on
every page view; these take their choices from the registry of the running process instead.
The status filter is Django's own: its choices come from the field.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from .models import Event
from .registry import registry
from .routing import DEFAULT_QUEUE

__all__ = ["QueueFilter", "ReceiverFilter", "SignalFilter"]


class _RegistryFilter(admin.SimpleListFilter):
    """Choices from the names registered in this process, plus the one selected, if any."""

    parameter_name: str  # the Event field filtered on, set by each subclass

    def names(self) -> list[str]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = set(self.names())
        selected = self.value()
        if selected:
            names.add(selected)
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        selected = self.value()
        return queryset.filter(**{self.parameter_name: selected}) if selected else queryset


class SignalFilter(_RegistryFilter):
    title = _("signal")
    parameter_name = "signal"

    def names(self) -> list[str]:
        return list(registry.signals)


class ReceiverFilter(_RegistryFilter):
    title = _("receiver")
    parameter_name = "receiver"

    def names(self) -> list[str]:
        return list(registry.receivers)


class QueueFilter(_RegistryFilter):
    title = _("queue")
    parameter_name = "queue"

    def names(self) -> list[str]:
        return [DEFAULT_QUEUE, *(spec.queue for spec in registry.receivers.values())]
