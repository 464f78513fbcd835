"""OpenTelemetry trace propagation, from the request that sends a signal to its receivers.

At send time (:func:`capture`), when an OpenTelemetry span is active, its W3C
``traceparent`` (and ``tracestate``) is stored with the event (the ``trace_context``
column). The worker runs each receiver inside a span of kind ``CONSUMER`` that continues
that trace (:func:`start`): a child of the sending span, current while the receiver runs so
that the receiver's own spans nest under it. A failed attempt records its exception on the
span and sets its status to error. A retry (attempt 2 and later) is still a child of the
sending span, and also carries a link to it, marked ``outbox.retry``, so that a backend
showing links lists every attempt of one send.

Only ``opentelemetry-api`` is needed (the ``otel`` extra); the application configures an
SDK and exporter as usual. Without the library, :func:`capture` and :func:`start` are
functions that return None, decided once at import: the send path gains one call.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["AVAILABLE", "capture", "finish", "start"]

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed
    trace = None  # type: ignore[assignment]

#: True when ``opentelemetry-api`` is installed.
AVAILABLE = trace is not None

#: The span attributes of a receiver's span. The ``messaging.*`` names follow OpenTelemetry's
#: messaging semantic conventions; ``outbox.*`` hold what those have no name for.
ATTRIBUTES = (
    "messaging.system",
    "messaging.operation.type",
    "messaging.destination.name",
    "messaging.message.id",
    "code.function.name",
    "outbox.event.id",
    "outbox.signal",
    "outbox.receiver",
    "outbox.queue",
    "outbox.attempt",
)


def _none(*args: Any) -> Any:
    return None


if trace is not None:
    _propagator = TraceContextTextMapPropagator()
    _tracer: Any = None

    def capture() -> str | None:
        """The active span's W3C trace context as JSON text, or None when no span is active.

        The ``traceparent`` is formatted here as the W3C propagator formats it (version 00),
        at a fraction of its cost: this runs on every send (``bench/trace_sendpath.py``)."""
        span = trace.get_current_span().get_span_context()
        if not span.is_valid:
            return None
        text = f'{{"traceparent":"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"'
        if span.trace_state:
            text += f',"tracestate":{json.dumps(span.trace_state.to_header())}'
        return text + "}"

    def start(row: Any) -> tuple[Any, Any]:
        """Open the span of one receiver call for claimed ``row`` and make it current; return
        what :func:`finish` closes. Call both from the same thread (or task)."""
        global _tracer
        if _tracer is None:
            from . import __version__

            _tracer = trace.get_tracer("outbox", __version__)
        parent = _parent(row.trace_context)
        links = None
        if parent is not None and row.attempts > 1:
            links = [trace.Link(trace.get_current_span(parent).get_span_context(), {"outbox.retry": True})]
        span = _tracer.start_span(
            f"process {row.receiver}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "outbox",
                "messaging.operation.type": "process",
                "messaging.destination.name": row.queue,
                "messaging.message.id": str(row.id),
                "code.function.name": row.receiver,
                "outbox.event.id": row.id,
                "outbox.signal": row.signal,
                "outbox.receiver": row.receiver,
                "outbox.queue": row.queue,
                "outbox.attempt": row.attempts,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    def finish(started: tuple[Any, Any], failure: BaseException | None) -> None:
        """Close a span :func:`start` opened: with the failure's exception and an error status
        if the attempt failed."""
        span, token = started
        otel_context.detach(token)
        if failure is not None:
            try:
                span.record_exception(failure)
            except Exception:  # noqa: BLE001 - the receiver's exception may fail its own __str__
                span.add_event("exception", {"exception.type": type(failure).__qualname__})
            span.set_status(trace.Status(trace.StatusCode.ERROR, _describe(failure)))
        span.end()

    def _describe(failure: BaseException) -> str:
        try:
            return f"{type(failure).__qualname__}: {failure}"
        except Exception:  # noqa: BLE001 - a receiver's exception may fail its own __str__
            return type(failure).__qualname__

    def _parent(stored: Any) -> Any:
        """The context a stored trace context names, or None (no context, or unreadable)."""
        if not stored:
            return None
        if isinstance(stored, str):
            try:
                stored = json.loads(stored)
            except ValueError:
                return None
        if not isinstance(stored, dict):
            return None
        parent = _propagator.extract(stored)
        return parent if trace.get_current_span(parent).get_span_context().is_valid else None
else:
    capture = start = finish = _none
