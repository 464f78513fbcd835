"""Decoding of event payloads in the worker: what :mod:`outbox.serialization` wrote, back.

Model instances are re-fetched in one query per model and database for the whole batch;
an instance whose row is gone (``post_delete``) is rebuilt from its send-time snapshot. A
reference whose primary key cannot be one of its model's, or that the database refuses,
fails its own event and no other.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import uuid
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError, connections, models, transaction
from django.http import HttpRequest, QueryDict

from .exceptions import DispatchError
from .serialization import _MAX_DEPTH, TAG, references

__all__ = ["PayloadDecoder"]


class PayloadDecoder:
    """Decode the payloads of one batch, fetching model instances in bulk.

    Call :meth:`add` for every payload first, then :meth:`decode` for each: model rows
    are fetched once, in one query per model and database, between the two.
    """

    def __init__(self) -> None:
        self._wanted: dict[tuple[str, str | None], set[Any]] = defaultdict(set)
        self._fetched: dict[tuple[str, str | None], dict[Any, models.Model]] | None = None
        # Primary keys that are not one of their model's, or that the database refused,
        # with the reason: their events fail, and only theirs.
        self._refused: dict[tuple[str, str | None], dict[Any, str]] = {}

    def add(self, payload: Any) -> None:
        """Note the model rows a payload refers to; bad payloads fail later, in decode."""
        try:
            for _, ref in references(payload):
                if ref[TAG] == "model":
                    self._wanted[(ref["label"], ref.get("db"))].add(self._decode(ref["pk"], 0))
        except Exception:  # noqa: BLE001 - reported per event by decode()
            pass

    def _fetch(self) -> None:
        self._fetched = {}
        for (label, db), pks in self._wanted.items():
            try:
                model = apps.get_model(label)
            except Exception:  # noqa: BLE001 - unknown labels fail their own events
                continue
            refused = self._refused[(label, db)] = {}
            self._fetched[(label, db)] = _fetch_rows(model, db, pks, refused)

    def prefetch(self) -> None:
        """Fetch the model rows now, from this thread, so that :meth:`decode` queries
        nothing and may be called from other threads."""
        if self._fetched is None:
            self._fetch()

    def decode(self, payload: Any) -> tuple[Any, dict[str, Any]]:
        """Return ``(sender, kwargs)`` for one payload, or raise :class:`DispatchError`."""
        if self._fetched is None:
            self._fetch()
        names = payload.get("kwargs") if isinstance(payload, dict) else None
        if not isinstance(names, (dict, list)):
            raise DispatchError("the payload is not an object with 'sender' and 'kwargs'")
        try:
            sender = self._decode(payload.get("sender"), 0)
            # An object of names, or [name, value] pairs when a name holds NUL or a comma.
            pairs = names.items() if type(names) is dict else ((self._decode(n, 0), v) for n, v in names)
            kwargs = {str(k): self._decode(v, 0) for k, v in pairs}
            order = payload.get("order")
            if order is not None:
                order = order.split(",")
                if sorted(order) != sorted(kwargs):
                    raise DispatchError("the payload's 'order' does not list its kwargs")
                kwargs = {name: kwargs[name] for name in order}
        except DispatchError:
            raise
        except Exception as exc:
            raise DispatchError(f"the payload cannot be decoded: {exc!r}") from exc
        return sender, kwargs

    def _decode(self, value: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise DispatchError("the payload is nested too deeply")
        kind = type(value)
        if kind is list:
            return [self._decode(v, depth + 1) for v in value]
        if kind is not dict:
            return value
        tag = value.get(TAG)
        if tag is None:
            return {k: self._decode(v, depth + 1) for k, v in value.items()}
        decoder = _DECODERS.get(tag)
        if decoder is None:
            raise DispatchError(f"the payload has an unknown tag {tag!r}")
        return decoder(self, value, depth + 1)

    def _model(self, value: dict[str, Any], depth: int) -> models.Model:
        label, db = value["label"], value.get("db")
        model = _get_model(label)
        pk = self._decode(value["pk"], depth)
        try:
            refused = self._refused.get((label, db), {}).get(pk)
        except TypeError:
            refused = f"cannot have the primary key {pk!r}: a {type(pk).__name__} is not a key"
        if refused is not None:
            raise DispatchError(f"{label} {refused}")
        found = (self._fetched or {}).get((label, db), {}).get(pk)
        if found is not None:
            return found
        if "fields" not in value:
            raise DispatchError(f"{label} with pk {pk!r} no longer exists and has no snapshot")
        names, values = [], []
        by_attname = {f.attname: f for f in model._meta.concrete_fields}
        for attname, raw in value["fields"].items():
            if attname in by_attname:
                names.append(attname)
                values.append(self._decode(raw, depth))
        for attname, text in value.get("strings", {}).items():
            if attname in by_attname:
                names.append(attname)
                values.append(by_attname[attname].to_python(_text(text)))
        order = {f.attname: i for i, f in enumerate(model._meta.concrete_fields)}
        pairs = sorted(zip(names, values, strict=True), key=lambda p: order[p[0]])
        return model.from_db(db, [n for n, _ in pairs], [v for _, v in pairs])

    def _queryset(self, value: dict[str, Any], depth: int) -> models.QuerySet:
        manager = _get_model(value["label"])._default_manager.db_manager(value.get("db"))
        if value.get("pks") is None:
            return manager.none()
        return manager.filter(pk__in=[self._decode(pk, depth) for pk in value["pks"]])


def _fetch_rows(
    model: type[models.Model], db: str | None, pks: Iterable[Any], refused: dict[Any, str]
) -> dict[Any, models.Model]:
    """The rows of ``pks``, in one query. A key that cannot be one of this model's (``"abc"``
    for an integer key, one the database refuses) goes in ``refused`` with the reason, and
    costs the other events their fresh rows neither way."""
    field, good = model._meta.pk, []
    column = getattr(field, "target_field", field)  # a parent link's: the parent's key
    for pk in pks:
        try:
            key = field.get_prep_value(field.to_python(pk))
            if isinstance(column, models.IntegerField):
                # Out of the column's range: PostgreSQL finds no row, SQLite raises.
                column.run_validators(key)
        except ValidationError as exc:
            refused[pk] = f"cannot have the primary key {pk!r}: {' '.join(exc.messages)}"
        except Exception as exc:  # noqa: BLE001 - whatever the field says of a bad key
            refused[pk] = f"cannot have the primary key {pk!r}: {type(exc).__name__}: {exc}"
        else:
            good.append(pk)
    rows = model._base_manager.using(db)
    try:
        return _in_bulk(rows, good)
    except _UNAVAILABLE:  # not the keys' fault: the worker reconnects, the rows wait
        raise
    except Exception:  # noqa: BLE001 - the database refused one: find it, fetch the rest
        fetched: dict[Any, models.Model] = {}
    for pk in good:
        try:
            fetched.update(_in_bulk(rows, [pk]))
        except _UNAVAILABLE:
            raise
        except Exception as exc:  # noqa: BLE001 - this key's event fails with the reason
            refused[pk] = f"with the primary key {pk!r} cannot be fetched: {type(exc).__name__}: {exc}"
    return fetched


_UNAVAILABLE = (OperationalError, InterfaceError)


def _in_bulk(rows: models.QuerySet, pks: list[Any]) -> dict[Any, models.Model]:
    if connections[rows.db].in_atomic_block:  # a failed query must not abort the caller's work
        with transaction.atomic(using=rows.db):
            return rows.in_bulk(pks)
    return rows.in_bulk(pks)


def _text(value: Any) -> Any:
    """A string field of a tagged object, which NUL made a "nul" object (see _clean)."""
    if type(value) is dict and value.get(TAG) == "nul":
        return "\0".join(value["v"])
    return value


def _get_model(label: str) -> type[models.Model]:
    try:
        return apps.get_model(label)
    except (LookupError, ValueError) as exc:
        raise DispatchError(f"the payload names the unknown model {label!r}") from exc


def _request(value: dict[str, Any]) -> HttpRequest:
    request = HttpRequest()
    request.method = _text(value.get("method"))
    request.path = _text(value.get("path", ""))
    request.path_info = _text(value.get("path_info", request.path))
    query = _text(value.get("query", ""))
    request.META = {**{k: _text(v) for k, v in value.get("meta", {}).items()}, "QUERY_STRING": query}
    request.GET = QueryDict(query)
    return request


def _moment_decoder(parse: Any) -> Any:
    def decode(d: PayloadDecoder, v: dict[str, Any], depth: int) -> Any:
        value = parse(v["v"])
        # Payloads of the previous version have neither: the offset alone, fold 0.
        if "tz" in v:
            value = value.replace(tzinfo=zoneinfo.ZoneInfo(v["tz"]))
        return value.replace(fold=1) if v.get("fold") else value

    return decode


def _dict(decoder: PayloadDecoder, value: dict[str, Any], depth: int) -> dict[Any, Any]:
    return {decoder._decode(k, depth): decoder._decode(v, depth) for k, v in value["v"]}


_DECODERS: dict[str, Any] = {
    "float": lambda d, v, depth: float(v["v"]),
    "dict": _dict,
    "tuple": lambda d, v, depth: tuple(d._decode(i, depth) for i in v["v"]),
    "set": lambda d, v, depth: {d._decode(i, depth) for i in v["v"]},
    "frozenset": lambda d, v, depth: frozenset(d._decode(i, depth) for i in v["v"]),
    "datetime": _moment_decoder(datetime.datetime.fromisoformat),
    "date": lambda d, v, depth: datetime.date.fromisoformat(v["v"]),
    "time": _moment_decoder(datetime.time.fromisoformat),
    "timedelta": lambda d, v, depth: datetime.timedelta(*v["v"]),
    "decimal": lambda d, v, depth: decimal.Decimal(v["v"]),
    "uuid": lambda d, v, depth: uuid.UUID(v["v"]),
    "bytes": lambda d, v, depth: base64.b64decode(v["v"]),
    "model": lambda d, v, depth: d._model(v, depth),
    "modelclass": lambda d, v, depth: _get_model(v["label"]),
    "queryset": lambda d, v, depth: d._queryset(v, depth),
    "request": lambda d, v, depth: _request(v),
    "nul": lambda d, v, depth: _text(v),
}
