"""Payloads: every encodable type round-trips; everything else fails at send time.

Round trips go through the real database: a send in a committed transaction, a worker
drain, and what the deferred receiver was called with. The same values must arrive on
SQLite and PostgreSQL, whose ``jsonb`` rewrites numbers and key order and refuses NUL.
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import uuid
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.http import HttpRequest
from django.test import override_settings
from django.utils import timezone

import outbox
from outbox import queries
from outbox.decoding import PayloadDecoder
from outbox.execution import decode_batch
from outbox.models import Event
from outbox.serialization import dumps, encode, encode_payload
from outbox.worker import Worker
from tests.conftest import calls
from tests.testapp import receivers
from tests.testapp.models import Person, Sample
from tests.testapp.signals import followed

pytestmark = pytest.mark.django_db(transaction=True)


def deliver(sender=None, **kwargs):
    """Send in a committed transaction, drain with the worker; return what the deferred
    receiver got as (sender, kwargs), ``signal`` left out."""
    receivers.CALLS.clear()
    with transaction.atomic():
        followed.send(sender=sender, **kwargs)
    Worker(once=True, listen=False).run()
    (call,) = calls("on_followed")
    receivers.CALLS.clear()
    got = dict(call[2])
    del got["signal"]
    return call[1], got


def roundtrip(value):
    return deliver(v=value)[1]["v"]


def same(a, b):
    """Equal, and of the same types, key order, float signs and NaNs, all the way down:
    for JSON-like values, two reprs are equal exactly then."""
    return type(a) is type(b) and repr(a) == repr(b)


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


# --- what PostgreSQL's jsonb would refuse or rewrite ------------------------------------

WITH_NUL = [
    "a\x00b",
    "\x00",
    "\\u0000 is six characters, not a NUL",
    "\\u0000 beside a real \x00",
    {"key\x00": "value\x00"},
    {"\x00": {"\x00\x00": ["deep \x00", ("in a tuple \x00",), {"in a set \x00"}]}},
    {("\x00", 1): "a tuple key holding a NUL"},
    {"__outbox__": "\x00 beside a user key that looks like a tag"},
]


@pytest.mark.parametrize("value", WITH_NUL, ids=repr)
def test_a_nul_character_round_trips_in_values_and_keys_at_any_depth(value):
    assert same(roundtrip(value), value)


def test_a_nul_character_round_trips_in_a_snapshot_and_a_request():
    person = Person.objects.create(name="ada")
    person.name = "ada\x00lovelace"
    Person.objects.filter(pk=person.pk).delete()
    request = HttpRequest()
    request.method, request.path, request.path_info = "POST", "/a\x00b/", "/a\x00b/"
    request.META = {"REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "bot\x00"}
    back = roundtrip([person, request])
    assert back[0].name == "ada\x00lovelace", "rebuilt from its snapshot"
    assert back[1].path == back[1].path_info == "/a\x00b/"
    assert back[1].META["HTTP_USER_AGENT"] == "bot\x00"


ODD_FLOATS = [1e16, -1e16, 1.5e16, 1e300, -1e300, 1.7976931348623157e308, -0.0]
EXACT_ALREADY = [5e-324, 1e-7, 9999999999999998.0, 0.1]


@pytest.mark.parametrize("value", ODD_FLOATS + EXACT_ALREADY, ids=repr)
def test_a_float_arrives_as_the_same_float(value):
    back = roundtrip({"x": value, "in a list": [value]})
    assert same(back, {"x": value, "in a list": [value]})


ORDERED = [
    {"b": 1, "a": 2},
    {"aa": 1, "b": 2},
    {"z": 1, "é": 2, "e": 3},
    {"name": "ada", "email": "a@example.com", "id": 1},
    {"outer": [{"second": 2, "first": 1}], "a": {"y": None, "x": None}},
    {"a": 1, "b": 2, "aa": 3},
]


@pytest.mark.parametrize("value", ORDERED, ids=repr)
def test_a_dict_keeps_its_key_order(value):
    assert same(roundtrip(value), value)


def test_the_sender_and_the_argument_names_arrive_unchanged():
    sender, kwargs = deliver(sender=1e16, zz=1, a=-0.0, bb={"b": 1, "a": 2})
    assert same(sender, 1e16)
    assert list(kwargs) == ["zz", "a", "bb"]
    assert same(kwargs, {"zz": 1, "a": -0.0, "bb": {"b": 1, "a": 2}})
    sender, kwargs = deliver(sender="x\x00y", **{"name\x00": "value\x00", "__outbox__": "dict", "v": []})
    assert same(sender, "x\x00y")
    assert same(kwargs, {"name\x00": "value\x00", "__outbox__": "dict", "v": []})
    sender, kwargs = deliver(**{"b": 1, "a,b": 2, "a": 3})
    assert same(kwargs, {"b": 1, "a,b": 2, "a": 3})


# --- dates and times -------------------------------------------------------------------

NEW_YORK = ZoneInfo("America/New_York")
# 01:30 happens twice in New York on 2026-11-01: fold=0 is EDT (-04:00), fold=1 is EST (-05:00).
TWICE = datetime.datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK)


@pytest.mark.parametrize("value", [TWICE, TWICE.replace(fold=1)], ids=["first", "second"])
def test_an_aware_datetime_keeps_its_zone_and_fold(value):
    back = roundtrip(value)
    assert back == value
    assert back.tzinfo is NEW_YORK and back.fold == value.fold
    assert back.utcoffset() == value.utcoffset()


def test_a_time_keeps_its_zone_and_fold_and_a_naive_datetime_its_fold():
    values = [
        datetime.time(1, 30, fold=1, tzinfo=NEW_YORK),
        datetime.time(1, 30, fold=1),
        datetime.datetime(2026, 11, 1, 1, 30, fold=1),
    ]
    back = roundtrip(values)
    assert back == values
    assert [(v.tzinfo, v.fold) for v in back] == [(NEW_YORK, 1), (None, 1), (None, 1)]


def test_a_fixed_offset_stays_a_fixed_offset():
    offset = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    value = [datetime.datetime(2026, 11, 1, 1, 30, tzinfo=offset), datetime.time(1, 30, tzinfo=offset)]
    back = roundtrip(value)
    assert back == value
    assert [v.tzinfo for v in back] == [offset, offset]
    utc = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    assert roundtrip(utc).tzinfo is datetime.timezone.utc


def test_a_datetime_written_by_the_previous_version_still_decodes():
    # The previous version wrote the offset alone: it still arrives, as a fixed offset.
    now = timezone.now()
    Event.objects.create(
        signal="tests.testapp.signals.followed",
        receiver="tests.testapp.receivers.on_followed",
        payload={
            "sender": None,
            "kwargs": {
                "v": {"__outbox__": "datetime", "v": "2026-11-01T01:30:00-05:00"},
                "t": {"__outbox__": "time", "v": "01:30:00"},
            },
        },
        max_attempts=1,
        available_at=now,
        created_at=now,
    )
    Worker(once=True, listen=False).run()
    ((_, _, kwargs),) = calls("on_followed")
    assert kwargs["v"] == datetime.datetime(2026, 11, 1, 6, 30, tzinfo=datetime.timezone.utc)
    assert kwargs["v"].utcoffset() == datetime.timedelta(hours=-5)
    assert kwargs["t"] == datetime.time(1, 30)


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
        sample.data = {"x": [1, 2], "b": 1e16, "a": "\x00"}  # never saved: jsonb refuses a NUL
        with transaction.atomic():
            followed.send(sender=None, v=sample)
            # Deleted before the worker runs: only the snapshot is left.
            Sample.objects.filter(pk=sample.pk).delete()
        Worker(once=True, listen=False).run()
        back = calls("on_followed")[0][2]["v"]
        for field in Sample._meta.concrete_fields:
            assert same(getattr(back, field.attname), getattr(sample, field.attname)), field.name
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

    def test_a_claimed_batch_fetches_its_instances_before_any_receiver_runs(self, django_assert_num_queries):
        # The worker skips the walk for rows to fetch in JSON text that cannot name an
        # instance; an instance written with an escaped tag is still fetched with the rest.
        people = [Person.objects.create(name=str(i)) for i in range(3)]
        texts = [dumps(encode_payload(Person, {"p": p, "n": 1})) for p in people]
        texts[2] = texts[2].replace('"model"', '"mod\\u0065l"')
        assert json.loads(texts[2]) == json.loads(dumps(encode_payload(Person, {"p": people[2], "n": 1})))
        plain = dumps(encode_payload(Person, {"n": 1, "text": 'a model, not "modelclass"'}))
        rows = [queries.Claimed(i, "s", "r", text, 1, 8) for i, text in enumerate([*texts, plain])]
        Person.objects.update(name="renamed since")  # fetched rows say so, snapshots do not
        with django_assert_num_queries(1):
            decoder, payloads = decode_batch(rows)
        with django_assert_num_queries(0):
            decoded = [decoder.decode(payloads[row.id]) for row in rows]
        assert [kwargs.get("p") for _, kwargs in decoded] == [*people, None]
        assert [kwargs["p"].name for _, kwargs in decoded[:3]] == ["renamed since"] * 3
        assert decoded[3] == (Person, {"n": 1, "text": 'a model, not "modelclass"'})
        with django_assert_num_queries(0):
            decode_batch(rows[3:])

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


@override_settings(OUTBOX={"MAX_PAYLOAD_BYTES": 1000})
def test_a_payload_over_the_size_limit_is_refused_at_send():
    ada = Person.objects.create(name="ada")
    with pytest.raises(outbox.PayloadTooLarge, match="MAX_PAYLOAD_BYTES"):
        followed.send(sender=ada, followed="x" * 2000)
    assert Event.objects.count() == 0
