"""Connecting receivers: what is accepted, what is refused at connect time, and why."""

from __future__ import annotations

import functools

import pytest
from django.db.models.signals import post_save
from django.dispatch import Signal

import outbox
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


def test_connecting_the_same_receiver_twice_is_idempotent():
    before = len(followed.receivers)
    outbox.connect(followed, module_level)
    outbox.connect(followed, module_level)
    assert len(followed.receivers) == before + 1
    assert outbox.disconnect(followed, module_level)
    assert len(followed.receivers) == before
    assert not outbox.disconnect(followed, module_level)


def test_one_function_on_several_signals_and_senders():
    other = Signal()
    globals()["other_signal"] = other  # signals must be module-level attributes to be named
    try:
        outbox.connect([followed, other], module_level)
        outbox.connect(followed, module_level, sender="a", dispatch_uid="for-a")
        assert get_signal(f"{__name__}.other_signal") is other
        assert outbox.disconnect([followed, other], module_level)
        assert outbox.disconnect(followed, sender="a", dispatch_uid="for-a")
    finally:
        del globals()["other_signal"]


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
