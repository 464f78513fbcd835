"""OpenTelemetry: the trace of the request that sends a signal continues in its receivers."""

from __future__ import annotations

import json

import pytest
from django.db import transaction
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from outbox.models import Event
from tests.testapp.observed import QUEUE, observed

pytestmark = pytest.mark.django_db(transaction=True)

OK = "tests.testapp.observed.observed_ok"
BROKEN = "tests.testapp.observed.observed_broken"
ASYNC = "tests.testapp.observed.observed_async"

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _sdk():
    # The global provider can be set once per process: these tests share it.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another tracer provider is installed in this process")
    yield
    _EXPORTER.shutdown()  # the provider stays: later tests' spans are dropped, not kept


@pytest.fixture
def spans(settings):
    settings.OUTBOX = {"BACKOFF_BASE_SECONDS": 0.001, "BACKOFF_MAX_SECONDS": 0.001}
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def named(exporter, name):
    return [span for span in exporter.get_finished_spans() if span.name == name]


def send_in_request(key, **kwargs):
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("POST /follow") as request, transaction.atomic():
        observed.send(sender=None, key=key, **kwargs)
    return request.get_span_context()


@pytest.mark.parametrize("concurrency", [1, 3])
def test_the_receivers_span_continues_the_senders_trace(drain, spans, concurrency):
    request = send_in_request("traced")
    stored = Event.objects.filter(receiver=OK).get().trace_context
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert stored["traceparent"].startswith(f"00-{request.trace_id:032x}-{request.span_id:016x}-")
    drain(queues=[QUEUE], concurrency=concurrency)

    for receiver in (OK, ASYNC, BROKEN):
        (span,) = named(spans, f"process {receiver}")
        assert span.context.trace_id == request.trace_id
        assert span.parent.span_id == request.span_id
        assert span.kind is SpanKind.CONSUMER
        assert span.status.status_code is StatusCode.UNSET
        event = Event.objects.get(receiver=receiver)
        assert dict(span.attributes) == {
            "messaging.system": "outbox",
            "messaging.operation.type": "process",
            "messaging.destination.name": QUEUE,
            "messaging.message.id": str(event.id),
            "code.function.name": receiver,
            "outbox.event.id": event.id,
            "outbox.signal": "tests.testapp.observed.observed",
            "outbox.receiver": receiver,
            "outbox.queue": QUEUE,
            "outbox.attempt": 1,
        }
        assert not span.links
    # The receiver's own spans are children of the worker's span: it is current while it runs.
    for receiver, inner in ((OK, "inside observed_ok"), (ASYNC, "inside observed_async")):
        (outer,) = named(spans, f"process {receiver}")
        (child,) = named(spans, inner)
        assert child.parent.span_id == outer.context.span_id
        assert child.context.trace_id == request.trace_id


def test_a_failed_attempt_records_its_exception_and_retries_are_linked(drain, spans):
    request = send_in_request("broken", fail=True)
    drain(queues=[QUEUE])
    attempts = sorted(named(spans, f"process {BROKEN}"), key=lambda span: span.attributes["outbox.attempt"])
    assert [span.attributes["outbox.attempt"] for span in attempts] == [1, 2]
    assert Event.objects.get(receiver=BROKEN).status == "failed"
    for span in attempts:
        assert span.context.trace_id == request.trace_id
        assert span.parent.span_id == request.span_id
        assert span.status.status_code is StatusCode.ERROR
        assert "observed_broken is broken for broken" in span.status.description
        (exception,) = [event for event in span.events if event.name == "exception"]
        assert exception.attributes["exception.type"] == "RuntimeError"
    first, retry = attempts
    assert not first.links
    (link,) = retry.links
    assert (link.context.trace_id, link.context.span_id) == (request.trace_id, request.span_id)
    assert link.attributes["outbox.retry"] is True


def test_a_send_with_no_active_span_stores_nothing_and_the_receiver_starts_a_trace(drain, spans):
    with transaction.atomic():
        observed.send(sender=None, key="untraced")
    assert list(Event.objects.values_list("trace_context", flat=True)) == [None, None, None]
    drain(queues=[QUEUE])
    (span,) = named(spans, f"process {OK}")
    assert span.parent is None
    assert span.kind is SpanKind.CONSUMER


def test_a_replayed_event_continues_the_trace_of_its_send(drain, spans):
    from outbox import operations

    request = send_in_request("again", fail=True)
    drain(queues=[QUEUE])
    spans.clear()
    operations.replay(Event.objects.filter(receiver=BROKEN))
    drain(queues=[QUEUE])
    (span, *_) = named(spans, f"process {BROKEN}")
    assert span.context.trace_id == request.trace_id
    assert span.parent.span_id == request.span_id


def test_the_stored_context_is_what_the_w3c_propagator_writes(spans):
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from outbox import tracing

    for state in (TraceState(), TraceState([("vendor", "a=1"), ("other", "x")])):
        for flags in (TraceFlags(0), TraceFlags(1)):
            context = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=flags, trace_state=state)
            with trace.use_span(NonRecordingSpan(context)):
                carrier: dict[str, str] = {}
                TraceContextTextMapPropagator().inject(carrier)
                assert json.loads(tracing.capture()) == carrier
    assert tracing.capture() is None


def test_the_admin_shows_an_events_trace_context(admin_client, spans):
    request = send_in_request("shown")
    event = Event.objects.filter(receiver=OK).get()
    page = admin_client.get(f"/admin/outbox/event/{event.id}/change/").content.decode()
    assert f"00-{request.trace_id:032x}-{request.span_id:016x}-" in page


def test_an_exception_whose_text_cannot_be_read_still_ends_its_span(drain, spans):
    from tests.testapp.faults import unrecordable

    with transaction.atomic():
        unrecordable.send(sender=None, kind="str() raises")
    drain()
    event = Event.objects.get(receiver="tests.testapp.faults.raise_unrecordable")
    assert event.status == "failed" and "UnprintableError" in event.last_error
    (span,) = named(spans, "process tests.testapp.faults.raise_unrecordable")
    assert span.status.status_code is StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in span.events] == ["UnprintableError"]
