"""Payloads: every encodable type round-trips; everything else fails at send time."""

from __future__ import annotations

import datetime
import decimal
import io
import json
import uuid

import pytest
from django.db import transaction
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

import outbox
from outbox.models import Event
from outbox.serialization import PayloadDecoder, dumps, encode, encode_payload
from tests.conftest import calls
from tests.testapp.models import Person, Sample
from tests.testapp.signals import followed


def roundtrip(value):
    payload = json.loads(dumps(encode_payload(None, {"v": value})))
    decoder = PayloadDecoder()
    decoder.add(payload)
    return decoder.decode(payload)[1]["v"]


PLAIN = [None, True, 0, -7, 2**70, 1.5, "text", "ünïcødé", [], {}, [1, [2, {"a": None}]]]
TYPED = [
    (1, 2, (3,)),
    {1, 2, 3},
    frozenset({"a", "b"}),
    datetime.datetime(2026, 11, 23, 20, 1, 2, 345678, tzinfo=datetime.timezone.utc),
    datetime.datetime(2026, 11, 23, 20, 1, 2),
    datetime.date(2026, 1, 31),
    datetime.time(23, 59, 58, 1),
    datetime.timedelta(days=-1, seconds=5, microseconds=7),
    decimal.Decimal("12.340"),
    decimal.Decimal("NaN"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\xffbytes",
    float("inf"),
    {1: "int key", (1, 2): "tuple key"},
    {"__outbox__": "a user key that looks like a tag"},
    {"nested": [{"when": datetime.date(2020, 2, 29), "ids": {uuid.UUID(int=1)}}]},
]


@pytest.mark.parametrize("value", PLAIN + TYPED, ids=repr)
def test_values_round_trip_with_their_types(value):
    back = roundtrip(value)
    assert back == value or (value != value and back != back)
    assert type(back) is type(value)


def test_nan_round_trips():
    assert roundtrip(float("nan")) != roundtrip(float("nan"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_any_plain_json_value_round_trips(value):
    assert roundtrip(value) == value


@pytest.mark.django_db(transaction=True)
class TestModels:
    def test_instances_classes_and_through_models_round_trip(self):
        person = Person.objects.create(name="ada")
        value = {"who": person, "model": Person, "through": Person.following.through}
        back = roundtrip(value)
        assert back["who"] == person and back["who"].name == "ada"
        assert back["model"] is Person and back["through"] is Person.following.through

    def test_a_deleted_instance_comes_back_from_its_snapshot_with_every_field(self):
        owner = Person.objects.create(name="o")
        sample = Sample.objects.create(
            title="t",
            amount=decimal.Decimal("1.250"),
            when=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
            day=datetime.date(2026, 1, 2),
            duration=datetime.timedelta(hours=5),
            data={"x": [1, 2]},
            attachment="x/file.txt",
            owner=owner,
        )
        payload = json.loads(dumps(encode_payload(None, {"v": sample})))
        Sample.objects.filter(pk=sample.pk).delete()
        decoder = PayloadDecoder()
        decoder.add(payload)
        back = decoder.decode(payload)[1]["v"]
        for field in Sample._meta.concrete_fields:
            assert getattr(back, field.attname) == getattr(sample, field.attname), field.name
        assert back._state.adding is False

    def test_deferred_fields_are_not_loaded_at_send_time(self, django_assert_num_queries):
        Person.objects.create(name="lazy")
        person = Person.objects.only("id").get()
        with django_assert_num_queries(0):
            encoded = encode(person)
        assert encoded["fields"] == {"id": person.pk}

    def test_the_whole_batch_fetches_each_model_in_one_query(self, django_assert_num_queries):
        people = [Person.objects.create(name=str(i)) for i in range(5)]
        payloads = [json.loads(dumps(encode_payload(p, {"p": p}))) for p in people]
        decoder = PayloadDecoder()
        for payload in payloads:
            decoder.add(payload)
        with django_assert_num_queries(1):
            decoded = [decoder.decode(p) for p in payloads]
        assert [kwargs["p"] for _, kwargs in decoded] == people

    def test_an_evaluated_queryset_keeps_its_rows_and_an_unevaluated_one_comes_back_empty(self):
        Person.objects.create(name="a")
        evaluated = Person.objects.all()
        list(evaluated)
        assert list(roundtrip(evaluated)) == list(evaluated)
        assert list(roundtrip(Person.objects.all())) == []


class Unknown:
    pass


def _unsaved():
    return Person(name="never saved")


BAD = {
    "a file": lambda: io.BytesIO(b"x"),
    "a lambda": lambda: lambda: None,
    "an unsaved instance": _unsaved,
    "an object of an unknown class": Unknown,
    "an unknown class nested in a list": lambda: [1, {"deep": Unknown()}],
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", BAD)
def test_an_argument_that_cannot_be_encoded_raises_at_send_and_writes_nothing(kind):
    ada = Person.objects.create(name="ada")
    with pytest.raises(outbox.SerializationError) as error, transaction.atomic():
        followed.send(sender=ada, followed=BAD[kind]())
    message = str(error.value)
    assert "tests.testapp.signals.followed" in message
    assert "tests.testapp.receivers.on_followed" in message
    assert "followed" in message
    assert Event.objects.count() == 0
    assert calls() == []


@pytest.mark.django_db(transaction=True)
def test_after_a_serialization_error_the_transaction_can_still_roll_back_cleanly():
    ada = Person.objects.create(name="ada")
    with transaction.atomic():
        Person.objects.create(name="kept")
        try:
            with transaction.atomic():
                followed.send(sender=ada, followed=Unknown())
        except outbox.SerializationError:
            pass
    assert Person.objects.filter(name="kept").exists()
    assert Event.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@override_settings(OUTBOX={"MAX_PAYLOAD_BYTES": 1000})
def test_a_payload_over_the_size_limit_is_refused_at_send():
    ada = Person.objects.create(name="ada")
    with pytest.raises(outbox.PayloadTooLarge, match="MAX_PAYLOAD_BYTES"):
        followed.send(sender=ada, followed="x" * 2000)
    assert Event.objects.count() == 0
