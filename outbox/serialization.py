"""JSON encoding of signal arguments: what a row may hold, and how it comes back.

Only data is stored, never code: a payload names model classes by their app label and
nothing else, so a row in the table cannot make the worker import or call anything.
Values JSON cannot hold natively are written as ``{"__outbox__": tag, ...}`` objects.

Model instances are stored as label, database, primary key and a snapshot of their
concrete field values. At dispatch they are re-fetched in one query per model and
database for the whole batch; an instance whose row is gone (``post_delete``) is rebuilt
from its snapshot.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import uuid
from collections import defaultdict
from typing import Any

from django.apps import apps
from django.db import models
from django.http import HttpRequest, QueryDict

from .exceptions import DispatchError, PayloadTooLarge, SerializationError

__all__ = ["PayloadDecoder", "dumps", "encode", "encode_payload"]

TAG = "__outbox__"
_MAX_DEPTH = 64
# Request attributes that survive the trip to the worker; bodies, files and sessions
# do not (they are large, or secrets, or tied to the live request).
_REQUEST_META = (
    "REMOTE_ADDR",
    "REMOTE_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
    "HTTP_HOST",
    "HTTP_USER_AGENT",
    "HTTP_REFERER",
    "HTTP_ACCEPT_LANGUAGE",
    "HTTP_X_FORWARDED_FOR",
    "wsgi.url_scheme",
)
_PLAIN = (str, int, bool, type(None))


def encode(value: Any, where: str = "value", _depth: int = 0) -> Any:
    """Return a JSON-compatible form of ``value``; raise :class:`SerializationError`.

    ``where`` names the value in error messages (``"followed"``, ``"pk_set[0]"``).
    """
    if _depth > _MAX_DEPTH:
        raise SerializationError(f"{where} is nested too deeply (a cycle?)")
    kind = type(value)
    if kind in _PLAIN:
        return value
    depth = _depth + 1
    if kind is float:
        return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}
    if kind is list:
        return [encode(v, f"{where}[{i}]", depth) for i, v in enumerate(value)]
    if kind is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: encode(v, f"{where}[{k!r}]", depth) for k, v in value.items()}
        return {
            TAG: "dict",
            "v": [
                [encode(k, f"{where} key", depth), encode(v, f"{where}[{k!r}]", depth)]
                for k, v in value.items()
            ],
        }
    if isinstance(value, models.Model):
        return _encode_instance(value, where, depth)
    if isinstance(value, type) and issubclass(value, models.Model):
        if value._meta.abstract:
            raise SerializationError(f"{where} is the abstract model {value.__name__}")
        return {TAG: "modelclass", "label": value._meta.label}
    if isinstance(value, (tuple, set, frozenset)):
        tag = "tuple" if isinstance(value, tuple) else "set"
        tag = "frozenset" if isinstance(value, frozenset) else tag
        return {TAG: tag, "v": [encode(v, f"{where}[{i}]", depth) for i, v in enumerate(value)]}
    if isinstance(value, datetime.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, datetime.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, datetime.time):
        return {TAG: "time", "v": value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {TAG: "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, models.QuerySet):
        # Never evaluated here: that would cost a query in the sender's transaction,
        # and for post_delete's ``origin`` the rows are already gone.
        cache = value._result_cache
        pks = None if cache is None else [encode(o.pk, where, depth) for o in cache]
        return {TAG: "queryset", "label": value.model._meta.label, "db": value.db, "pks": pks}
    if isinstance(value, HttpRequest):
        return _encode_request(value)
    if isinstance(value, (str, int, float)):  # subclasses, such as Django's choices
        return encode(_base_value(value), where, _depth)
    raise SerializationError(
        f"{where} is {_describe(value)}, which cannot be stored as JSON; pass plain data, "
        f"a saved model instance or its primary key instead"
    )


def _base_value(value: Any) -> Any:
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    raise AssertionError(value)  # pragma: no cover


def _describe(value: Any) -> str:
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"a {name} ({value!r:.60})"


def _encode_instance(obj: models.Model, where: str, depth: int) -> dict[str, Any]:
    meta = obj._meta
    if obj.pk is None:
        raise SerializationError(f"{where} is an unsaved {meta.label} instance (its pk is None)")
    fields: dict[str, Any] = {}
    strings: dict[str, str] = {}
    loaded = obj.__dict__
    for field in meta.concrete_fields:
        if field.attname not in loaded:  # deferred: reading it would cost a query
            continue
        try:
            fields[field.attname] = encode(loaded[field.attname], field.attname, depth)
        except SerializationError:
            strings[field.attname] = field.value_to_string(obj)
    ref = {TAG: "model", "label": meta.label, "db": obj._state.db, "pk": encode(obj.pk, where, depth)}
    ref["fields"] = fields
    if strings:
        ref["strings"] = strings
    return ref


def _encode_request(request: HttpRequest) -> dict[str, Any]:
    meta = {k: str(request.META[k]) for k in _REQUEST_META if k in request.META}
    return {
        TAG: "request",
        "method": request.method,
        "path": request.path,
        "path_info": request.path_info,
        "query": request.META.get("QUERY_STRING", "") or request.GET.urlencode(),
        "meta": meta,
    }


def encode_payload(sender: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Encode a signal's ``sender`` and keyword arguments for one event row."""
    return {
        "sender": encode(sender, "sender"),
        "kwargs": {name: encode(value, name) for name, value in kwargs.items()},
    }


# One encoder for every send: json.dumps() with options builds a new one on each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(payload: dict[str, Any], limit: int | None = None) -> str:
    """Serialize an encoded payload, refusing one larger than ``limit`` bytes."""
    text = _ENCODER.encode(payload)
    if limit is not None and len(text) > limit // 4 and len(text.encode()) > limit:
        raise PayloadTooLarge(
            f"the encoded arguments take {len(text.encode())} bytes, more than "
            f'OUTBOX["MAX_PAYLOAD_BYTES"] = {limit}; store large data elsewhere and pass a key'
        )
    return text


class PayloadDecoder:
    """Decode the payloads of one batch, fetching model instances in bulk.

    Call :meth:`add` for every payload first, then :meth:`decode` for each: model rows
    are fetched once, in one query per model and database, between the two.
    """

    def __init__(self) -> None:
        self._wanted: dict[tuple[str, str | None], set[Any]] = defaultdict(set)
        self._fetched: dict[tuple[str, str | None], dict[Any, models.Model]] | None = None

    def add(self, payload: Any) -> None:
        """Note the model rows a payload refers to; bad payloads fail later, in decode."""
        try:
            self._collect(payload, 0)
        except Exception:  # noqa: BLE001 - reported per event by decode()
            pass

    def _collect(self, value: Any, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        if type(value) is list:
            for item in value:
                self._collect(item, depth + 1)
        elif type(value) is dict:
            if value.get(TAG) == "model":
                self._wanted[(value["label"], value.get("db"))].add(self._decode(value["pk"], 0))
            for item in value.values():
                self._collect(item, depth + 1)

    def _fetch(self) -> None:
        self._fetched = {}
        for (label, db), pks in self._wanted.items():
            try:
                model = apps.get_model(label)
                self._fetched[(label, db)] = model._base_manager.using(db).in_bulk(list(pks))
            except Exception:  # noqa: BLE001 - unknown labels fail their own events
                continue

    def decode(self, payload: Any) -> tuple[Any, dict[str, Any]]:
        """Return ``(sender, kwargs)`` for one payload, or raise :class:`DispatchError`."""
        if self._fetched is None:
            self._fetch()
        if not isinstance(payload, dict) or not isinstance(payload.get("kwargs"), dict):
            raise DispatchError("the payload is not an object with 'sender' and 'kwargs'")
        try:
            sender = self._decode(payload.get("sender"), 0)
            kwargs = {str(k): self._decode(v, 0) for k, v in payload["kwargs"].items()}
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
                values.append(by_attname[attname].to_python(text))
        order = {f.attname: i for i, f in enumerate(model._meta.concrete_fields)}
        pairs = sorted(zip(names, values, strict=True), key=lambda p: order[p[0]])
        return model.from_db(db, [n for n, _ in pairs], [v for _, v in pairs])

    def _queryset(self, value: dict[str, Any], depth: int) -> models.QuerySet:
        manager = _get_model(value["label"])._default_manager.db_manager(value.get("db"))
        if value.get("pks") is None:
            return manager.none()
        return manager.filter(pk__in=[self._decode(pk, depth) for pk in value["pks"]])


def _get_model(label: str) -> type[models.Model]:
    try:
        return apps.get_model(label)
    except (LookupError, ValueError) as exc:
        raise DispatchError(f"the payload names the unknown model {label!r}") from exc


def _request(value: dict[str, Any]) -> HttpRequest:
    request = HttpRequest()
    request.method = value.get("method")
    request.path = value.get("path", "")
    request.path_info = value.get("path_info", request.path)
    request.META = {**value.get("meta", {}), "QUERY_STRING": value.get("query", "")}
    request.GET = QueryDict(value.get("query", ""))
    return request


def _dict(decoder: PayloadDecoder, value: dict[str, Any], depth: int) -> dict[Any, Any]:
    return {decoder._decode(k, depth): decoder._decode(v, depth) for k, v in value["v"]}


_DECODERS: dict[str, Any] = {
    "float": lambda d, v, depth: float(v["v"]),
    "dict": _dict,
    "tuple": lambda d, v, depth: tuple(d._decode(i, depth) for i in v["v"]),
    "set": lambda d, v, depth: {d._decode(i, depth) for i in v["v"]},
    "frozenset": lambda d, v, depth: frozenset(d._decode(i, depth) for i in v["v"]),
    "datetime": lambda d, v, depth: datetime.datetime.fromisoformat(v["v"]),
    "date": lambda d, v, depth: datetime.date.fromisoformat(v["v"]),
    "time": lambda d, v, depth: datetime.time.fromisoformat(v["v"]),
    "timedelta": lambda d, v, depth: datetime.timedelta(*v["v"]),
    "decimal": lambda d, v, depth: decimal.Decimal(v["v"]),
    "uuid": lambda d, v, depth: uuid.UUID(v["v"]),
    "bytes": lambda d, v, depth: base64.b64decode(v["v"]),
    "model": lambda d, v, depth: d._model(v, depth),
    "modelclass": lambda d, v, depth: _get_model(v["label"]),
    "queryset": lambda d, v, depth: d._queryset(v, depth),
    "request": lambda d, v, depth: _request(v),
}
