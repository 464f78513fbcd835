"""Model signals with a lazy sender ("app_label.ModelName"), as Django's ModelSignal takes them.

The outbox keeps one proxy per signal and sender; a string sender must share the proxy of the
model it names, or Django keeps one of the two proxies and the other's receivers get nothing.
"""

from __future__ import annotations

import contextlib

import pytest
from django.apps import apps
from django.core import checks
from django.db import connection, models
from django.db.models.signals import post_save

import outbox
from outbox.models import Event
from outbox.registry import registry
from tests.testapp.models import Person

pytestmark = pytest.mark.django_db(transaction=True)

SEEN: list[tuple[str, str]] = []


def by_label(sender, instance, **kwargs):
    SEEN.append(("by_label", instance.name))


def by_class(sender, instance, **kwargs):
    SEEN.append(("by_class", instance.name))


BY_LABEL = f"{__name__}.by_label"
BY_CLASS = f"{__name__}.by_class"


@pytest.fixture(autouse=True)
def _seen():
    SEEN.clear()
    yield
    SEEN.clear()


def rows(receiver):
    return Event.objects.filter(receiver=receiver).count()


@pytest.mark.parametrize("label_first", [True, False], ids=["label-first", "class-first"])
def test_a_string_sender_and_its_model_class_each_get_one_row_per_save(drain, label_first):
    connects = [
        lambda: outbox.connect(post_save, by_label, sender="testapp.Person"),
        lambda: outbox.connect(post_save, by_class, sender=Person),
    ]
    for connect in connects if label_first else reversed(connects):
        connect()
    try:
        Person.objects.create(name="ada")
        Person.objects.create(name="grace")
        assert (rows(BY_LABEL), rows(BY_CLASS)) == (2, 2)
        drain()
        assert sorted(SEEN) == [
            ("by_class", "ada"),
            ("by_class", "grace"),
            ("by_label", "ada"),
            ("by_label", "grace"),
        ]
    finally:
        outbox.disconnect(post_save, by_label, sender="testapp.Person")
        outbox.disconnect(post_save, by_class, sender=Person)
    assert not post_save.has_listeners(Person)


def test_disconnecting_by_label_disconnects_what_was_connected_by_class_and_back():
    outbox.connect(post_save, by_class, sender=Person)
    outbox.connect(post_save, by_label, sender="testapp.Person")
    assert outbox.disconnect(post_save, by_class, sender="testapp.Person")
    assert outbox.disconnect(post_save, by_label, sender=Person)
    assert not outbox.disconnect(post_save, by_label, sender="testapp.Person")
    assert not post_save.has_listeners(Person)
    Person.objects.create(name="ada")
    assert Event.objects.count() == 0


@contextlib.contextmanager
def late_model():
    """A model of tests.testapp declared now, long after the receivers were imported, with
    its table; taken out of the app registry again afterwards."""

    class Latecomer(models.Model):
        name = models.CharField(max_length=20)

        class Meta:
            app_label = "testapp"

        def __str__(self):
            return self.name

    with connection.schema_editor() as editor:
        editor.create_model(Latecomer)
    try:
        yield Latecomer
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Latecomer)
        del apps.all_models["testapp"]["latecomer"]
        apps.clear_cache()


def test_a_string_sender_whose_model_is_declared_later_gets_rows_once_it_is(drain):
    outbox.connect(post_save, by_label, sender="testapp.Latecomer")
    try:
        with late_model() as latecomer:
            outbox.connect(post_save, by_class, sender=latecomer)
            latecomer.objects.create(name="late")
            assert (rows(BY_LABEL), rows(BY_CLASS)) == (1, 1)
            drain()
            assert sorted(SEEN) == [("by_class", "late"), ("by_label", "late")]
            assert outbox.disconnect(post_save, by_label, sender="testapp.Latecomer")
            assert outbox.disconnect(post_save, by_class, sender=latecomer)
            assert not post_save.has_listeners(latecomer)
    finally:
        outbox.disconnect(post_save, by_label, sender="testapp.Latecomer")


def test_a_string_sender_disconnected_before_its_model_is_declared_never_gets_rows():
    outbox.connect(post_save, by_label, sender="testapp.Latecomer")
    assert outbox.disconnect(post_save, by_label, sender="testapp.Latecomer")
    assert not outbox.disconnect(post_save, by_label, sender="testapp.Latecomer")
    with late_model() as latecomer:
        assert not post_save.has_listeners(latecomer)
        latecomer.objects.create(name="late")
        assert Event.objects.count() == 0


def test_a_string_sender_naming_no_model_is_reported_by_manage_py_check():
    outbox.connect(post_save, by_label, sender="testapp.NoSuchModel")
    try:
        [error] = [e for e in checks.run_checks() if "testapp.nosuchmodel" in e.msg]
        assert error.id == "models.E022"
        assert f"deferred receivers ({BY_LABEL}) of django.db.models.signals.post_save" in error.msg
        assert "app 'testapp' doesn't provide model 'nosuchmodel'" in error.msg
    finally:
        outbox.disconnect(post_save, by_label, sender="testapp.NoSuchModel")
        # Nothing else takes a lazy operation back: both registries forget it by hand.
        apps._pending_operations.pop(("testapp", "nosuchmodel"), None)
        registry._pending.pop((post_save, ("testapp", "nosuchmodel")), None)
