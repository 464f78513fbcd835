"""The registry of receivers connected through the outbox, and the proxies that defer them.

``connect()`` does not hand the user's function to the signal. It connects a small proxy:
for ``delivery="outbox"`` one proxy per signal and sender writes the event rows of all the
deferred receivers connected there, in one statement in the sender's transaction; for
``delivery="on_commit"`` it schedules the call with ``transaction.on_commit``. The worker
finds receivers and signals here by name, so only what this process registered can run.
"""

from __future__ import annotations

import datetime
import inspect
import re
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import transaction
from django.dispatch import Signal

from . import coroutines, limits, queries, routing, serialization
from .async_send import asend_hint
from .conf import settings
from .exceptions import RegistrationError, SerializationError
from .lazy_senders import Pending, model_key
from .tracing import capture as capture_trace

__all__ = ["ReceiverSpec", "connect", "disconnect", "get_receiver", "get_signal", "registry"]

DELIVERIES = ("outbox", "on_commit")

#: A receiver's timeout= is armed with setitimer, which overflows long before timedelta does.
_TIMEOUT = limits.Range(float, 0, limits.MAX_SECONDS, above=True, unit="seconds")


@dataclass(frozen=True)
class ReceiverSpec:
    """A deferred receiver as the worker sees it."""

    path: str
    func: Callable[..., Any]
    max_attempts: int | None = None
    timeout: float | None = None
    queue: str = routing.DEFAULT_QUEUE
    #: Called at send time for the event's ordering key (outbox.routing.ordering_key).
    ordering_key: Callable[..., Any] | None = None
    #: Called at send time, as ordering_key is: a false result writes no row.
    when: Callable[..., Any] | None = None
    #: Seconds from the send to the first attempt (None: at once).
    delay: float | None = None
    #: Called at send time for the event's dedupe key (coalescing: see connect()).
    dedupe_key: Callable[..., Any] | None = None
    #: Run in a transaction on the outbox's database that also writes the event done.
    atomic: bool = False


class Registry:
    """Receivers by dotted path, signals by name, and the proxies connected for them."""

    def __init__(self) -> None:
        self.receivers: dict[str, ReceiverSpec] = {}
        self.signals: dict[str, Signal] = {}
        self._names: weakref.WeakKeyDictionary[Signal, str] = weakref.WeakKeyDictionary()
        # The proxy of each signal and sender that has deferred receivers.
        self._lock = threading.RLock()  # a lazy sender's hand-off defers under it
        self._groups: weakref.WeakKeyDictionary[Signal, dict[Any, _DeferToOutbox]] = (
            weakref.WeakKeyDictionary()
        )
        # Receivers of lazy senders whose model is not registered yet.
        self._pending: dict[tuple[Signal, tuple[str, str]], Pending] = {}

    def signal_name(self, signal: Signal) -> str:
        """The dotted path of the module attribute that defines ``signal``."""
        name = self._names.get(signal)
        if name is None:
            name = _find_signal_name(signal)
            other = self.signals.get(name)
            if other is not None and other is not signal:
                raise RegistrationError(f"two different signals claim the name {name!r}")
            self._names[signal] = name
            self.signals[name] = signal
        return name

    def defer(self, signal: Signal, sender: Any, uid: Any, spec: ReceiverSpec) -> None:
        """Add a deferred receiver to the proxy of ``signal`` for ``sender``, connecting the
        proxy on first use. Like ``Signal.connect()``, a second ``uid`` is ignored.

        A model signal's lazy sender (``"app_label.ModelName"``) joins the proxy of the model
        it names, as soon as that model is registered: Django resolves it to the class, and
        keeps only one proxy per class.
        """
        key = model_key(signal, sender)
        if key is None:
            self._defer(signal, sender, uid, spec)
            return
        name = self.signal_name(signal)  # refused now, not when the model registers
        with self._lock:
            pending = self._pending.get((signal, key))
            if pending is None:
                pending = self._pending[(signal, key)] = Pending(signal, key, name, self._hand_over)
                first = True
            else:
                first = False
            pending.specs.setdefault(uid, spec)
        if first:  # outside the lock: runs at once when the model is registered already
            apps.lazy_model_operation(pending, key)

    def _hand_over(self, pending: Pending, model: Any) -> None:
        """A lazy sender's model is registered: its receivers join the model's proxy."""
        with self._lock:  # so that forget() finds each receiver either here or in the proxy
            del self._pending[(pending.signal, pending.key)]
            for uid, spec in pending.specs.items():
                self._defer(pending.signal, model, uid, spec)

    def _defer(self, signal: Signal, sender: Any, uid: Any, spec: ReceiverSpec) -> None:
        with self._lock:
            proxies = self._groups.setdefault(signal, {})
            key = _sender_key(sender)
            proxy = proxies.get(key)
            if proxy is None:
                proxy = proxies[key] = _DeferToOutbox(self.signal_name(signal))
                signal.connect(proxy, sender=sender, weak=False, dispatch_uid=_DeferToOutbox.UID)
            if uid not in proxy.specs:
                proxy.specs = {**proxy.specs, uid: spec}  # replaced, never mutated: sends read it

    def forget(self, signal: Signal, sender: Any, uid: Any) -> bool:
        """Drop one deferred receiver of ``signal`` for ``sender``; True if it was there.

        The proxy is disconnected with its last receiver, so ``has_listeners()`` is false
        again. The receiver stays registered by path: rows already written still run.
        """
        key = model_key(signal, sender)
        if key is not None:
            with self._lock:
                pending = self._pending.get((signal, key))
                if pending is not None and pending.specs.pop(uid, None) is not None:
                    return True  # its model is not registered yet: it never joins the proxy
            try:
                sender = apps.get_registered_model(*key)
            except LookupError:
                return False
        with self._lock:
            proxies = self._groups.get(signal, {})
            key = _sender_key(sender)
            proxy = proxies.get(key)
            if proxy is None or uid not in proxy.specs:
                return False
            proxy.specs = {k: v for k, v in proxy.specs.items() if k != uid}
            if not proxy.specs:
                signal.disconnect(sender=sender, dispatch_uid=_DeferToOutbox.UID)
                del proxies[key]
            return True

    def add_receiver(self, spec: ReceiverSpec) -> None:
        old = self.receivers.get(spec.path)
        if old is None or old == spec:
            self.receivers[spec.path] = spec
        elif old.func is not spec.func and _origin(old.func) != _origin(spec.func):
            raise RegistrationError(
                f"two different functions claim the receiver path {spec.path!r}: one defined at "
                f"{_origin(old.func)}, the other at {_origin(spec.func)}; rename one of them"
            )
        elif (old.max_attempts, old.timeout, old.queue, old.delay, old.atomic) != (
            spec.max_attempts,
            spec.timeout,
            spec.queue,
            spec.delay,
            spec.atomic,
        ) or any(
            (getattr(old, name) is None) != (getattr(spec, name) is None)
            for name in ("ordering_key", "when", "dedupe_key")
        ):
            raise RegistrationError(
                f"{spec.path} is connected twice with different max_attempts, timeout, queue, delay, "
                f"atomic, ordering_key, when or dedupe_key"
            )
        else:  # the same function re-imported (importlib.reload, autoreload)
            self.receivers[spec.path] = spec


registry = Registry()


def receiver_path(func: Callable[..., Any]) -> str:
    """Return ``module.name`` for a module-level function, or raise RegistrationError."""
    if inspect.ismethod(func):
        raise RegistrationError(
            f"{func!r} is a bound method; deferred receivers must be module-level functions "
            f"so that the worker can find them by dotted path"
        )
    if not inspect.isfunction(func):
        raise RegistrationError(
            f"{func!r} is not a function; deferred receivers must be module-level functions"
        )
    qualname = func.__qualname__
    if func.__name__ == "<lambda>" or "<" in qualname or "." in qualname:
        raise RegistrationError(
            f"{func.__module__}.{qualname} is a lambda, closure or method; deferred receivers "
            f"must be module-level functions so that the worker can find them by dotted path"
        )
    if func.__module__ in (None, "__main__"):
        raise RegistrationError(f"{qualname} is defined in __main__, which the worker cannot import")
    return f"{func.__module__}.{qualname}"


def _origin(func: Callable[..., Any]) -> str:
    code = getattr(func, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else repr(func)


def _find_signal_name(signal: Signal) -> str:
    """Find where a signal is defined, the same way in every process.

    A signal is usually imported into many modules; only the module that assigns it
    (``followed = Signal()``) is imported in every process that uses it, so that one names it.
    """
    found = []
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not namespace or module_name == "__main__":
            continue
        for attr, value in list(namespace.items()):
            if value is signal:
                found.append((module_name, attr, module))
    if not found:
        raise RegistrationError(
            f"{signal!r} is not a module-level attribute of any imported module; define "
            f"signals at module level so that the worker can find them by name"
        )
    defining = [f for f in found if _assigns(f[2], f[1])]
    module_name, attr, _ = min(defining or found, key=lambda f: (f[0].count("."), f[0], f[1]))
    return f"{module_name}.{attr}"


def _assigns(module: Any, attr: str) -> bool:
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return re.search(rf"^{re.escape(attr)}\s*(:[^=\n]*)?=[^=]", source, re.MULTILINE) is not None


def get_receiver(path: str) -> ReceiverSpec | None:
    """The deferred receiver registered under ``path`` in this process, if any."""
    return registry.receivers.get(path)


def get_signal(name: str) -> Signal | None:
    """The signal registered under ``name`` in this process, if any."""
    return registry.signals.get(name)


class _DeferToOutbox:
    """Connected to a signal, once per sender, in place of its deferred receivers.

    A send asks each receiver's ``when`` first (the receivers it turns away get no row), then
    encodes the arguments once and writes one row per remaining receiver, in the order they
    were connected, in one INSERT (queries.insert_events), with their delays and keys.
    """

    #: The dispatch_uid of every proxy: Django keeps one per signal and sender.
    UID = ("outbox", "proxy", "deferred")  # user uids are ("outbox", uid): never equal

    def __init__(self, signal_name: str) -> None:
        self.signal_name = signal_name
        self.specs: dict[Any, ReceiverSpec] = {}  # by the receiver's dispatch_uid

    def __call__(self, signal: Signal, sender: Any, **kwargs: Any) -> None:
        arguments = {"signal": signal, **kwargs}
        # when= first: a send that no receiver wants costs no encoding and no statement.
        specs = [
            spec
            for spec in self.specs.values()
            if spec.when is None or routing.wanted(spec.when, spec.path, sender, arguments)
        ]
        if not specs:
            return
        try:
            payload = serialization.dumps(
                serialization.encode_payload(sender, kwargs), settings.MAX_PAYLOAD_BYTES
            )
        except SerializationError as exc:
            names = ", ".join(spec.path for spec in specs)
            raise type(exc)(f"cannot defer {names} for signal {self.signal_name}: {exc}") from None
        default = settings.MAX_ATTEMPTS
        rows = [
            queries.NewEvent(
                spec.path,
                spec.max_attempts or default,
                spec.queue,
                None
                if spec.ordering_key is None
                else routing.ordering_key(spec.ordering_key, spec.path, sender, arguments),
                spec.delay,
                None
                if spec.dedupe_key is None
                else routing.ordering_key(spec.dedupe_key, spec.path, sender, arguments, "dedupe_key"),
            )
            for spec in specs
        ]
        with asend_hint(lambda: self.signal_name):
            queries.insert_events(_database(kwargs), self.signal_name, rows, payload, capture_trace())


def _path_of(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)!s}"


class _RunOnCommit:
    """Connected to the signal in place of an on_commit receiver."""

    def __init__(self, func: Callable[..., Any], when: Callable[..., Any] | None = None) -> None:
        self.func = func
        self.when = when

    def __call__(self, signal: Signal, sender: Any, **kwargs: Any) -> None:
        arguments = {"signal": signal, **kwargs}
        if self.when is not None and not routing.wanted(self.when, _path_of(self.func), sender, arguments):
            return
        call = _Call(self.func, signal, sender, kwargs)
        with asend_hint(lambda: _name_if_any(signal)):
            transaction.on_commit(call, using=_database(kwargs), robust=True)


class _Call:
    """One pending on_commit call; Django logs a failure by the callback's __qualname__.
    An async receiver is awaited to completion (outbox.coroutines.run_after_commit)."""

    def __init__(self, func: Callable[..., Any], signal: Signal, sender: Any, kwargs: dict[str, Any]):
        self.func, self.signal, self.sender, self.kwargs = func, signal, sender, kwargs
        self.__qualname__ = getattr(func, "__qualname__", repr(func))

    def __call__(self) -> None:
        coroutines.run_after_commit(self.func, signal=self.signal, sender=self.sender, **self.kwargs)


def _name_if_any(signal: Signal) -> str | None:
    """The signal's name for an error message: on_commit receivers need none to work."""
    try:
        return registry.signal_name(signal)
    except RegistrationError:
        return None


def _database(kwargs: dict[str, Any]) -> str:
    using = kwargs.get("using")
    return using if isinstance(using, str) and using else settings.database


def _signals(signal: Signal | Iterable[Signal]) -> list[Any]:
    """The signals given, one or a list or tuple of them; connect() refuses what is no Signal."""
    return list(signal) if isinstance(signal, (list, tuple)) else [signal]


def _sender_key(sender: Any) -> Any:
    """A sender's key, as Django's dispatcher keys it: the object's id, or for a bound method
    (a new object at each attribute access) its instance's and function's."""
    if hasattr(sender, "__func__"):
        return (id(sender.__self__), id(sender.__func__))
    return id(sender)


def _uid(func: Callable[..., Any] | None, dispatch_uid: Any, delivery: str) -> Any:
    if dispatch_uid is not None:
        return ("outbox", dispatch_uid)
    if func is None:
        raise RegistrationError("disconnect() needs the receiver function or its dispatch_uid")
    if delivery == "outbox":
        return ("outbox", receiver_path(func))
    return ("outbox", "on_commit", id(func))


def connect(
    signal: Signal | Iterable[Signal],
    func: Callable[..., Any],
    *,
    sender: Any = None,
    dispatch_uid: Any = None,
    delivery: str = "outbox",
    max_attempts: int | None = None,
    timeout: float | None = None,
    queue: str | None = None,
    ordering_key: Callable[..., Any] | None = None,
    when: Callable[..., Any] | None = None,
    delay: float | datetime.timedelta | None = None,
    dedupe_key: Callable[..., Any] | None = None,
    atomic: bool = False,
) -> None:
    """Connect ``func`` to ``signal`` (or a list of signals) with deferred delivery.

    ``delivery="outbox"`` (default) writes an event row in the sender's transaction for the
    worker to run after commit; ``delivery="on_commit"`` calls ``func`` in this process
    right after the transaction commits. ``max_attempts`` and ``timeout`` (seconds) apply
    to outbox delivery, and so do ``queue`` (the queue its events are written to, default
    ``"default"``) and ``ordering_key`` (``func(sender, signal=..., **kwargs)`` returning a
    str, int or None: events of one receiver and key run one at a time, in send order).

    ``when`` (``func(sender, signal=..., **kwargs)``, called at send time, also for
    on_commit) decides whether this send is for the receiver at all: false writes no row.
    ``delay`` (seconds or a timedelta, from 0 to ten years) holds the event's first attempt
    back until that long after the send. ``dedupe_key`` (called as ``ordering_key`` is)
    coalesces sends: while an event of the receiver with the same key is pending and no
    worker has taken it yet, a new send writes no row.

    ``atomic=True`` runs the receiver inside a transaction on the outbox's database and
    writes the event done in that same transaction, fenced on the worker's lease: the
    receiver's writes to that database commit exactly when the event is done, once.
    """
    if delivery not in DELIVERIES:
        raise RegistrationError(f"delivery must be one of {DELIVERIES}, not {delivery!r}")
    if delivery == "on_commit" and any(x is not None for x in (queue, ordering_key, delay, dedupe_key)):
        raise RegistrationError(
            "queue, ordering_key, delay and dedupe_key apply to delivery='outbox' only: an on_commit "
            "receiver runs in the sender's process right after commit, with no row, no queue and no "
            "worker to order, delay or coalesce it"
        )
    _check_atomic(func, atomic, delivery)
    for name, value in (("ordering_key", ordering_key), ("when", when), ("dedupe_key", dedupe_key)):
        if value is not None and not callable(value):
            raise RegistrationError(f"{name} must be a function of (sender, **kwargs): {value!r}")
    delay = routing.check_delay(delay)
    # Refused here, not by the column at send time (which aborts the sender's transaction).
    if max_attempts is not None and not limits.SETTINGS["MAX_ATTEMPTS"].holds(max_attempts):
        raise RegistrationError(
            f"max_attempts must be {limits.SETTINGS['MAX_ATTEMPTS'].describe()}, not {max_attempts!r}"
        )
    if timeout is not None and not _TIMEOUT.holds(timeout):
        raise RegistrationError(f"timeout must be {_TIMEOUT.describe()}, not {timeout!r}")
    if delivery == "outbox":
        queue = routing.DEFAULT_QUEUE if queue is None else routing.check_queue(queue)
        spec = ReceiverSpec(
            receiver_path(func),
            func,
            max_attempts,
            timeout,
            queue,
            ordering_key,
            when,
            delay,
            dedupe_key,
            atomic,
        )
        registry.add_receiver(spec)
    uid = _uid(func, dispatch_uid, delivery)
    for one in _signals(signal):
        if not isinstance(one, Signal):
            raise RegistrationError(f"{one!r} is not a django.dispatch.Signal")
        if delivery == "outbox":
            registry.defer(one, sender, uid, spec)
        else:
            one.connect(_RunOnCommit(func, when), sender=sender, weak=False, dispatch_uid=uid)


def _check_atomic(func: Callable[..., Any], atomic: Any, delivery: str) -> None:
    if atomic is False:
        return
    if atomic is not True:
        raise RegistrationError(f"atomic must be True or False, not {atomic!r}")
    if delivery != "outbox":
        raise RegistrationError(
            "atomic=True applies to delivery='outbox' only: an on_commit receiver has no event row "
            "to write done with its work (wrap its body in transaction.atomic() instead)"
        )
    if coroutines.is_async(func):
        raise RegistrationError(
            f"atomic=True needs a sync receiver: {receiver_path(func)} is async, and Django's "
            f"transaction.atomic() does not hold across await (write its database work in a "
            f"sync receiver, or make it idempotent with outbox.current_event().idempotency_key)"
        )


def disconnect(
    signal: Signal | Iterable[Signal],
    func: Callable[..., Any] | None = None,
    *,
    sender: Any = None,
    dispatch_uid: Any = None,
    delivery: str = "outbox",
) -> bool:
    """Disconnect what :func:`connect` connected with the same arguments.

    Returns True if anything was disconnected. Events already written stay in the table
    and still run: the worker keeps the receiver registered, as it must to drain them.
    """
    uid = _uid(func, dispatch_uid, delivery)
    disconnected = False
    for one in _signals(signal):
        if delivery == "outbox":
            disconnected = registry.forget(one, sender, uid) or disconnected
        else:
            disconnected = one.disconnect(sender=sender, dispatch_uid=uid) or disconnected
    return disconnected


def receiver(
    signal: Signal | Iterable[Signal], **options: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator form of :func:`connect`; returns the function unchanged."""

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        connect(signal, func, **options)
        return func

    return decorator
