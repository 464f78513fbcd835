"""Receivers the observability tests watch (metrics and traces), on a queue of their own.

Each send of ``observed`` writes three events: ``observed_ok`` (records a Call row),
``observed_broken`` (raises while ``fail`` is true; two attempts) and ``observed_async``.
Each opens a span of its own while it runs, when OpenTelemetry is installed, so that the
tests can see that the worker's span is current inside the receiver.
"""

import os

import django.dispatch

import outbox

from .models import Call

observed = django.dispatch.Signal()

QUEUE = "observed"

try:
    from opentelemetry import trace
except ImportError:
    trace = None


def _inner_span(name):
    if trace is None:
        return None
    return trace.get_tracer("tests").start_as_current_span(name)


@outbox.receiver(observed, queue=QUEUE)
def observed_ok(sender, key, **kwargs):
    span = _inner_span("inside observed_ok")
    if span is not None:
        with span:
            pass
    Call.objects.create(receiver="observed_ok", key=key, worker_pid=os.getpid())


@outbox.receiver(observed, queue=QUEUE, max_attempts=2)
def observed_broken(sender, key, fail=False, **kwargs):
    if fail:
        raise RuntimeError(f"observed_broken is broken for {key}")


@outbox.receiver(observed, queue=QUEUE)
async def observed_async(sender, key, **kwargs):
    span = _inner_span("inside observed_async")
    if span is not None:
        with span:
            pass
