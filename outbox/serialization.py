"""JSON encoding of signal arguments: what a row may hold (:mod:`outbox.decoding` brings
it back).

Only data is stored, never code: a payload names model classes by their app label and
nothing else, so a row in the table cannot make the worker import or call anything.
Values JSON cannot hold natively are written as ``{"__outbox__": tag, ...}`` objects.

PostgreSQL stores the payload as ``jsonb``, which refuses NUL and rewrites what it keeps:
numbers become ``numeric`` (``1e16`` comes back as an int, ``-0.0`` as ``0.0``) and object
keys are reordered. So the payload never holds what jsonb would refuse or change: such
floats are tagged, a dict whose keys jsonb would reorder is written as a list of pairs,
and strings holding NUL are tagged as their NUL-free parts. SQLite gets the same payload,
so both databases deliver the same values.

Model instances are stored as label, database, primary key and a snapshot of their
concrete field values. :func:`references` finds them in a stored payload without decoding
it: the one walker of this format for readers other than the decoder's own.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import sys
import uuid
import zoneinfo
from collections.abc import Iterable, Iterator
from typing import Any

from django.db import models
from django.http import HttpRequest

from .exceptions import PayloadTooLarge, SerializationError

__all__ = ["TAG", "dumps", "encode", "encode_payload", "references"]

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


def encode(value: Any, where: Any = "value", _depth: int = 0) -> Any:
    """Return a JSON-compatible form of ``value``; raise :class:`SerializationError`.

    ``where`` names the value in error messages (``"followed"``, ``"pk_set[0]"``): a str,
    or inside containers a ``(parent, step)`` pair that only an error turns into text.
    """
    if _depth > _MAX_DEPTH:
        raise SerializationError(f"{_path(where)} is nested too deeply (a cycle?)")
    kind = type(value)
    if kind in _PLAIN:
        return value
    depth = _depth + 1
    if kind is float:
        # Not NaN or inf (not JSON), nor what jsonb's numeric rewrites: -0.0, and from 1e16
        # up, which Python writes with an exponent and numeric gives back as an integer.
        if -1e16 < value < 1e16 and (value or math.copysign(1.0, value) > 0):
            return value
        return {TAG: "float", "v": repr(value)}
    # Containers are encoded by helpers: a comprehension here would make every call,
    # the many for plain values too, pay for closure cells.
    if kind is list:
        return _encode_items(value, where, depth)
    if kind is dict:
        return _encode_dict(value, where, depth)
    if isinstance(value, models.Model):
        return _encode_instance(value, where, depth)
    if isinstance(value, type) and issubclass(value, models.Model):
        if value._meta.abstract:
            raise SerializationError(f"{_path(where)} is the abstract model {value.__name__}")
        return {TAG: "modelclass", "label": value._meta.label}
    if isinstance(value, (tuple, set, frozenset)):
        tag = "tuple" if isinstance(value, tuple) else "set"
        tag = "frozenset" if isinstance(value, frozenset) else tag
        return {TAG: tag, "v": _encode_items(value, where, depth)}
    if isinstance(value, datetime.datetime):
        return _moment("datetime", value)
    if isinstance(value, datetime.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, datetime.time):
        return _moment("time", value)
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
        pks = None if cache is None else _encode_items([o.pk for o in cache], where, depth)
        return {TAG: "queryset", "label": value.model._meta.label, "db": value.db, "pks": pks}
    if isinstance(value, HttpRequest):
        return _encode_request(value)
    if isinstance(value, (str, int, float)):  # subclasses, such as Django's choices
        return encode(_base_value(value), where, _depth)
    raise SerializationError(
        f"{_path(where)} is {_describe(value)}, which cannot be stored as JSON; pass plain data, "
        f"a saved model instance or its primary key instead"
    )


def _encode_items(values: Any, where: Any, depth: int) -> list[Any]:
    return [encode(v, (where, i), depth) for i, v in enumerate(values)]


def _encode_dict(value: dict[Any, Any], where: Any, depth: int) -> dict[str, Any]:
    ordered = _in_jsonb_order(value)
    if ordered and TAG not in value:
        return {k: encode(v, (where, k), depth) for k, v in value.items()}
    if ordered is None:  # keys that are not str: encoded like values
        key = (where, _KEY)
        pairs = [[encode(k, key, depth), encode(v, (where, k), depth)] for k, v in value.items()]
    else:  # str keys that jsonb would reorder, or the tag among them
        pairs = [[k, encode(v, (where, k), depth)] for k, v in value.items()]
    return {TAG: "dict", "v": pairs}


_KEY = object()  # the step of a dict's key in a (parent, step) path


def _path(where: Any) -> str:
    """``where`` as text: ``followed[2]['deep']``, ``followed key``."""
    steps = []
    while type(where) is tuple:
        where, step = where
        steps.append(" key" if step is _KEY else f"[{step!r}]")
    return str(where) + "".join(reversed(steps))


def _in_jsonb_order(keys: Iterable[Any]) -> bool | None:
    """True if jsonb would keep these str keys in this order, False if it would not (it
    sorts an object's keys by UTF-8 length, then bytewise: code point order); None if
    some key is not a str."""
    size, last = -1, ""
    for key in keys:
        if type(key) is not str:
            return None
        n = len(key) if key.isascii() else len(key.encode("utf-8", "surrogatepass"))
        if n < size or (n == size and key < last):
            return False
        size, last = n, key
    return True


def _moment(tag: str, value: datetime.datetime | datetime.time) -> dict[str, Any]:
    """A datetime or time: ``isoformat()`` holds the offset, not the zone, nor ``fold``
    (which of a repeated wall time); without them a time in a DST overlap would come back
    unequal to itself, and arithmetic would ignore the zone's later transitions."""
    encoded: dict[str, Any] = {TAG: tag, "v": value.isoformat()}
    zone = value.tzinfo
    if isinstance(zone, zoneinfo.ZoneInfo) and zone.key:
        encoded["tz"] = zone.key
    if value.fold:
        encoded["fold"] = 1
    return encoded


def _base_value(value: Any) -> Any:
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    raise AssertionError(value)  # pragma: no cover


def _describe(value: Any) -> str:
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"a {name} ({value!r:.60})"


def _encode_instance(obj: models.Model, where: Any, depth: int) -> dict[str, Any]:
    meta = obj._meta
    if obj.pk is None:
        raise SerializationError(f"{_path(where)} is an unsaved {meta.label} instance (its pk is None)")
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
    """Encode a signal's ``sender`` and keyword arguments for one event row.

    ``kwargs`` stays an object (readable in the admin and in SQL); when jsonb would
    reorder its names, ``order`` lists them as they were sent, joined by commas (one
    string costs the encoder a fifth of five). Names holding a comma are written as
    ``[name, value]`` pairs instead, as are names holding NUL (see :func:`dumps`).
    """
    names = {name: encode(value, name) for name, value in kwargs.items()}
    payload = {"sender": encode(sender, "sender"), "kwargs": names}
    if len(names) > 1:
        key = tuple(names)
        order = _ORDERS.get(key, False)
        if order is False:
            order = None if _in_jsonb_order(key) else ",".join(key) if "," not in "".join(key) else ""
            if len(_ORDERS) < 1000:  # a signal sends the same names each time
                _ORDERS[key] = order
        if order:
            payload["order"] = order
        elif order is not None:
            payload["kwargs"] = [[name, value] for name, value in names.items()]
    return payload


#: The tags of references to models: an instance (label, db, pk, fields) or a class (label).
_REFERENCES = ("model", "modelclass")


def references(
    payload: Any, where: str = "payload", depth: int = _MAX_DEPTH
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each model instance or class a stored payload names, as ``(path, reference)``, in
    the payload's order; a reference is the tagged object (``label``, a str, and for an
    instance ``db`` and ``pk``).

    Paths read ``payload.kwargs.instance``, ``payload.kwargs.pk_set[0]``: the contents of
    a tagged value (a tuple's items, an instance's snapshot) take the tagged value's path.
    Nothing more than ``depth`` levels down is visited. Only data is read: no model is
    imported, and a malformed payload yields what it can instead of raising. Used by the
    worker's decoder (to fetch a batch's instances in bulk) and the admin (to link them).
    """
    # Depth first, with a stack rather than recursion (no generator per level); a path is
    # a (parent, step) pair made into text only for a reference found.
    stack: list[tuple[Any, Any, int]] = [(payload, where, 0)]
    while stack:
        value, path, level = stack.pop()
        if level > depth:
            continue
        kind = type(value)
        if kind is list:
            stack.extend((value[i], (path, i), level + 1) for i in range(len(value) - 1, -1, -1))
        elif kind is dict:
            tag = value.get(TAG)
            if tag is None:
                children = [(item, (path, key), level + 1) for key, item in value.items()]
            else:
                if tag in _REFERENCES and type(value.get("label")) is str:
                    yield _dotted(path), value
                children = [(item, path, level + 1) for item in value.values()]
            stack.extend(reversed(children))


def _dotted(path: Any) -> str:
    """A (parent, step) path of :func:`references` as text: ``payload.kwargs.items[2]``."""
    steps = []
    while type(path) is tuple:
        path, step = path
        steps.append(f"[{step}]" if type(step) is int else f".{step}")
    return str(path) + "".join(reversed(steps))


# For each tuple of argument names: None if jsonb keeps their order, else what "order" says
# ("" if a name holds a comma).
_ORDERS: dict[tuple[str, ...], str | None] = {}


# One encoder for every send: json.dumps() with options builds a new one on each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(payload: dict[str, Any], limit: int | None = None) -> str:
    """Serialize an encoded payload, refusing one larger than ``limit`` bytes.

    Raises :class:`SerializationError` naming the value for what cannot be written:
    a lone surrogate (not UTF-8) or an int with more digits than ``str()`` may write.
    """
    try:
        text = _ENCODER.encode(payload)
    except ValueError:  # an int too long to write: _writable() names it
        text = ""
    # One look at the whole text instead of one at every string: NUL (written \u0000,
    # which jsonb refuses), a lone surrogate (which UTF-8 cannot hold), an int too long.
    if not text or "\\u0000" in text or not (text.isascii() or _is_utf8(text)):
        text = _ENCODER.encode(_writable(payload))
    if limit is not None and len(text) > limit // 4 and len(text.encode()) > limit:
        raise PayloadTooLarge(
            f"the encoded arguments take {len(text.encode())} bytes, more than "
            f'OUTBOX["MAX_PAYLOAD_BYTES"] = {limit}; store large data elsewhere and pass a key'
        )
    return text


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _writable(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with every NUL out of its strings and keys; raise SerializationError
    for a string or int that cannot be written at all."""
    out = {"sender": _clean(payload["sender"], "sender")}
    kwargs = payload["kwargs"]
    pairs = [
        (_clean(name, f"the argument name {name!r}"), _clean(value, name))
        for name, value in (kwargs.items() if type(kwargs) is dict else kwargs)
    ]
    if type(kwargs) is dict and all(type(name) is str for name, _ in pairs):
        out["kwargs"] = dict(pairs)
        if "order" in payload:
            out["order"] = payload["order"]
    else:  # a name holds NUL or a comma: [name, value] pairs, in order
        out["kwargs"] = [list(pair) for pair in pairs]
    return out


def _clean(value: Any, where: str) -> Any:
    kind = type(value)
    if kind is str:
        if not _is_utf8(value):
            bad = next(c for c in value if "\ud800" <= c <= "\udfff")
            raise SerializationError(
                f"{where} holds a lone surrogate ({bad!r}), which is not text and cannot be "
                f"written as UTF-8; decode bytes with errors='replace' before sending them"
            )
        return {TAG: "nul", "v": value.split("\0")} if "\0" in value else value
    if kind is int:
        try:
            repr(value)
        except ValueError:
            raise SerializationError(
                f"{where} is an int of {_digits(value)} digits, more than the "
                f"{sys.get_int_max_str_digits()} that Python writes as text; send it as a str"
            ) from None
        return value
    if kind is list:
        return [_clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is not dict:
        return value
    tag = value.get(TAG)
    if tag is None:
        keys = [_clean(k, f"{where} key {k!r}") for k in value]
        values = [_clean(v, f"{where}[{k!r}]") for k, v in value.items()]
        if all(type(k) is str for k in keys):
            return dict(zip(keys, values, strict=True))
        return {TAG: "dict", "v": [list(pair) for pair in zip(keys, values, strict=True)]}
    if tag == "dict":
        pairs = [(k, _clean(k, f"{where} key {k!r}"), v) for k, v in value["v"]]
        return {TAG: tag, "v": [[ck, _clean(v, f"{where}[{k!r}]")] for k, ck, v in pairs]}
    # Our own tagged objects: "v" is the value itself, other fields are named after it.
    return {k: v if k == TAG else _clean(v, where if k == "v" else f"{where}.{k}") for k, v in value.items()}


def _digits(value: int) -> int:
    value = abs(value)
    digits = int(value.bit_length() * math.log10(2)) + 1
    return digits - 1 if value < 10 ** (digits - 1) else digits


def __getattr__(name: str) -> Any:
    # PayloadDecoder lived here; imported lazily, as outbox.decoding imports this module.
    if name == "PayloadDecoder":
        from .decoding import PayloadDecoder

        return PayloadDecoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
