"""Connecting receivers: what is accepted, what is refused at connect time, and why."""

from __future__ import annotations

import contextlib
import functools

import pytest
from django.db import connection
from django.db.models import Max
from django.db.models.signals import post_save
from django.dispatch import Signal
from django.test.utils import CaptureQueriesContext

import outbox
from outbox.models import Event
from outbox.registry import get_receiver, get_signal, registry
from tests.testapp import receivers
from tests.testapp.signals import followed, pinged


def module_level(sender, **kwargs):
    """A valid deferred receiver, connected and disconnected by these tests."""


class Handlers:
    def method(self, sender, **kwargs):
        pass


def test_receiver_names_are_dotted_paths_and_signals_are_named_where_defined():
    assert get_receiver("tests.testapp.receivers.on_followed").func is receivers.on_followed
    assert get_signal("tests.testapp.signals.followed") is followed
    assert get_signal("django.db.models.signals.post_save") is post_save


def test_lambda_is_refused_with_a_clear_error():
    with pytest.raises(outbox.RegistrationError, match="lambda"):
        outbox.connect(followed, lambda sender, **kw: None)


def test_closure_is_refused_naming_it():
    def inner(sender, **kwargs):
        pass

    with pytest.raises(outbox.RegistrationError, match=r"test_closure_is_refused_naming_it\.<locals>\.inner"):
        outbox.connect(followed, inner)


def test_bound_method_is_refused():
    with pytest.raises(outbox.RegistrationError, match="bound method"):
        outbox.connect(followed, Handlers().method)


def test_partial_is_refused():
    with pytest.raises(outbox.RegistrationError, match="not a function"):
        outbox.connect(followed, functools.partial(module_level))


def test_a_second_function_claiming_the_same_path_is_refused_naming_both():
    namespace: dict = {"__name__": __name__}
    exec("def module_level(sender, **kwargs):\n    return 'impostor'\n", namespace)
    impostor = namespace["module_level"]
    impostor.__code__ = impostor.__code__.replace(co_filename="elsewhere.py")
    outbox.connect(pinged, module_level, dispatch_uid="one")
    try:
        with pytest.raises(outbox.RegistrationError, match=r"two different functions.*elsewhere\.py"):
            outbox.connect(pinged, impostor, dispatch_uid="two")
    finally:
        outbox.disconnect(pinged, module_level, dispatch_uid="one")


def rows_per_send(signal, **kwargs):
    """The receivers of the rows one send of ``signal`` writes, in id order."""
    before = Event.objects.aggregate(last=Max("id"))["last"] or 0
    signal.send(**{"sender": "test", **kwargs})
    return list(Event.objects.filter(id__gt=before).order_by("id").values_list("receiver", flat=True))


MODULE_LEVEL = f"{__name__}.module_level"


@pytest.mark.django_db(transaction=True)
def test_connecting_the_same_receiver_twice_is_idempotent():
    outbox.connect(followed, module_level)
    outbox.connect(followed, module_level)
    try:
        assert rows_per_send(followed).count(MODULE_LEVEL) == 1
    finally:
        assert outbox.disconnect(followed, module_level)
    assert MODULE_LEVEL not in rows_per_send(followed)
    assert not outbox.disconnect(followed, module_level)


def test_disconnect_without_the_receiver_or_its_dispatch_uid_is_refused():
    with pytest.raises(outbox.RegistrationError, match="needs the receiver function or its dispatch_uid"):
        outbox.disconnect(followed)


@contextlib.contextmanager
def module_signal(name):
    """A new signal, defined as an attribute of this module (signals are named where defined)."""
    globals()[name] = signal = Signal()
    try:
        yield signal
    finally:
        del globals()[name]


@pytest.mark.django_db(transaction=True)
def test_the_deferred_receivers_of_a_send_are_written_by_one_insert_in_connection_order():
    with module_signal("lone_signal") as lone:
        outbox.connect(lone, module_level)
        outbox.connect(lone, receivers.on_followed, dispatch_uid="second")
        outbox.connect(lone, receivers.record, dispatch_uid="third")
        with CaptureQueriesContext(connection) as queries:
            assert rows_per_send(lone, key="k") == [
                MODULE_LEVEL,
                "tests.testapp.receivers.on_followed",
                "tests.testapp.receivers.record",
            ]
        inserts = [q for q in queries.captured_queries if "INSERT INTO outbox_event" in q["sql"]]
        assert len(inserts) == 1
        assert len(lone.receivers) == 1  # one proxy for the three
        assert outbox.disconnect(lone, receivers.on_followed, dispatch_uid="second")
        assert rows_per_send(lone, key="k") == [MODULE_LEVEL, "tests.testapp.receivers.record"]
        assert outbox.disconnect(lone, module_level)
        assert outbox.disconnect(lone, receivers.record, dispatch_uid="third")
        assert not lone.has_listeners("test")  # the last disconnect takes the proxy away
        assert rows_per_send(lone) == []


@pytest.mark.django_db(transaction=True)
def test_a_receiver_connected_for_one_sender_gets_rows_only_for_that_sender():
    with module_signal("per_sender_signal") as lone:
        outbox.connect(lone, module_level)
        outbox.connect(lone, receivers.on_followed, sender="a")
        assert rows_per_send(lone, sender="a") == [MODULE_LEVEL, "tests.testapp.receivers.on_followed"]
        assert rows_per_send(lone, sender="b") == [MODULE_LEVEL]
        assert outbox.disconnect(lone, receivers.on_followed, sender="a")
        assert not outbox.disconnect(lone, receivers.on_followed)  # not connected for every sender
        assert lone.has_listeners("b")
        assert outbox.disconnect(lone, module_level)
        assert not lone.has_listeners("b")


def test_one_function_on_several_signals_and_senders():
    with module_signal("other_signal") as other:
        outbox.connect([followed, other], module_level)
        outbox.connect(followed, module_level, sender="a", dispatch_uid="for-a")
        assert get_signal(f"{__name__}.other_signal") is other
        assert outbox.disconnect([followed, other], module_level)
        assert outbox.disconnect(followed, sender="a", dispatch_uid="for-a")


def test_a_signal_that_is_not_a_module_attribute_is_refused():
    with pytest.raises(outbox.RegistrationError, match="module-level attribute"):
        outbox.connect(Signal(), module_level)


def test_bad_options_are_refused():
    with pytest.raises(outbox.RegistrationError, match="delivery"):
        outbox.connect(followed, module_level, delivery="later")
    with pytest.raises(outbox.RegistrationError, match="max_attempts"):
        outbox.connect(followed, module_level, max_attempts=0)
    with pytest.raises(outbox.RegistrationError, match="timeout"):
        outbox.connect(followed, module_level, timeout=-1)
    with pytest.raises(outbox.RegistrationError, match="not a django.dispatch.Signal"):
        outbox.connect("followed", module_level)


def test_on_commit_delivery_accepts_any_callable():
    handler = Handlers().method
    outbox.connect(followed, handler, delivery="on_commit", dispatch_uid="bound")
    assert outbox.disconnect(followed, handler, delivery="on_commit", dispatch_uid="bound")


def test_the_decorator_returns_the_function_unchanged():
    assert receivers.on_followed.__name__ == "on_followed"
    assert registry.receivers["tests.testapp.receivers.flaky"].max_attempts == 3
