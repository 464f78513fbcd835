"""Reading event rows whatever they hold, for the pages and reports an operator needs most
when something is wrong.

A row can hold values that the database accepts but Python cannot load: PostgreSQL's
``'-infinity'`` and ``'infinity'`` timestamps (and years beyond 9999), on which psycopg
raises ``DataError``; JSON nested deeper than Python's :mod:`json` reads, on which
``JSONField`` raises ``RecursionError``. Loading such a row the ordinary way fails, and with it
the admin's list, the event's page (so the operator cannot even discard it) and
``outbox_status``. Here timestamps are selected as a datetime where Python can hold one and
as the database's text otherwise, and the payload as text, parsed with that failure caught.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import DateTimeField, F, Func, QuerySet, TextField
from django.db.models.functions import Cast
from django.db.models.sql.compiler import SQLCompiler

__all__ = [
    "TIME_FIELDS",
    "Payload",
    "ReadableTime",
    "UnreadableTime",
    "earliest",
    "payload_of",
    "readable",
    "time_of",
]

#: The event's timestamp columns.
TIME_FIELDS = ("created_at", "available_at", "finished_at")
# What Python's datetime holds, with a day to spare for the connection's time zone.
_IN_RANGE = "%(expressions)s BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'"


class ReadableTime(Func):
    """A timestamp column, or NULL where Python cannot hold its value (PostgreSQL only).

    The column appears twice in the SQL: give it a column, not an expression with parameters.
    """

    output_field = DateTimeField()
    template = "%(expressions)s"

    def as_postgresql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> tuple[str, Sequence[Any]]:
        template = f"CASE WHEN {_IN_RANGE} THEN %(expressions)s END"
        return self.as_sql(compiler, connection, template=template, **extra)


class UnreadableTime(Func):
    """The database's text of a timestamp Python cannot hold (``'-infinity'``), else NULL."""

    output_field = TextField()
    template = "NULL"

    def as_postgresql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> tuple[str, Sequence[Any]]:
        template = f"CASE WHEN NOT ({_IN_RANGE}) THEN CAST(%(expressions)s AS text) END"
        return self.as_sql(compiler, connection, template=template, **extra)


def earliest(queryset: QuerySet[Any], name: str) -> tuple[datetime.datetime | None, str]:
    """The earliest ``name`` among the rows of ``queryset``, in (``name``, id) order: as
    ``(datetime, "")``, or ``(None, text)`` with the database's text where Python cannot hold
    it (``'-infinity'``); ``(None, "")`` when there is no row."""
    row = queryset.order_by(name, "id").values_list(ReadableTime(F(name)), UnreadableTime(F(name))).first()
    return (None, "") if row is None else (row[0], row[1] or "")


def readable(queryset: QuerySet[Any]) -> QuerySet[Any]:
    """Events whose timestamps are read through :func:`time_of` and whose payload is not
    loaded (:func:`payload_of` reads it), so that no value in a row can fail the query."""
    annotations: dict[str, Any] = {}
    for name in TIME_FIELDS:
        annotations[f"outbox_{name}"] = ReadableTime(F(name))
        annotations[f"outbox_{name}_text"] = UnreadableTime(F(name))
    return queryset.defer("payload", *TIME_FIELDS).annotate(**annotations)


def time_of(event: Any, name: str) -> datetime.datetime | str | None:
    """One timestamp of an event from :func:`readable`: a datetime, the database's text of a
    value Python cannot hold, or None."""
    return getattr(event, f"outbox_{name}_text") or getattr(event, f"outbox_{name}")


@dataclass
class Payload:
    """A payload's stored text, and its value unless too deeply nested for Python to read."""

    text: str
    value: Any = None
    too_deep: bool = False


def payload_of(event: Any) -> Payload:
    """The payload of one event, read as text (one query, cached on the event) then parsed."""
    cached = getattr(event, "_outbox_payload", None)
    if cached is None:
        text = (
            type(event)
            ._default_manager.using(event._state.db)
            .filter(pk=event.pk)
            .values_list(Cast("payload", TextField()), flat=True)
            .first()
        )
        cached = Payload(text or "")
        try:
            cached.value = json.loads(cached.text) if cached.text else None
        except RecursionError:
            cached.too_deep = True
        event._outbox_payload = cached
    return cached
