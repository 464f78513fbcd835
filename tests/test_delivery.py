"""From send to receiver: what commits runs once, what rolls back never runs."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in
from django.db import connection, transaction
from django.test import RequestFactory

import outbox
from outbox.models import Event
from tests.conftest import calls, postgres_only
from tests.testapp.models import Person, Sample
from tests.testapp.signals import followed

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


@pytest.fixture
def people():
    return Person.objects.create(name="ada"), Person.objects.create(name="bob")


def test_a_deferred_receiver_does_not_run_at_send_time(people):
    ada, bob = people
    with transaction.atomic():
        followed.send(sender=ada, followed=bob)
        assert calls("on_followed") == []
    assert calls("on_followed") == []
    assert Event.objects.get().status == "pending"


def test_committed_send_runs_each_deferred_receiver_exactly_once(people, drain):
    ada, bob = people
    with transaction.atomic():
        followed.send(sender=ada, followed=bob)
    assert drain() == 1
    assert drain() == 0
    [(_, sender, kwargs)] = calls("on_followed")
    assert sender == ada
    assert kwargs == {"signal": followed, "followed": bob}
    assert Event.objects.get().status == "done"


def test_rolled_back_follow_sends_nothing(people, drain):
    ada, bob = people
    with pytest.raises(Boom), transaction.atomic():
        ada.following.add(bob)
        followed.send(sender=ada, followed=bob)
        raise Boom
    assert Event.objects.count() == 0
    assert drain() == 0
    assert calls() == []


def test_rolled_back_savepoint_sends_nothing_but_the_outer_transaction_does(people, drain):
    ada, bob = people
    with transaction.atomic():
        followed.send(sender=ada, followed=ada)
        with pytest.raises(Boom), transaction.atomic():
            followed.send(sender=ada, followed=bob)
            raise Boom
    drain()
    assert [kw["followed"] for _, _, kw in calls("on_followed")] == [ada]
    assert [kw["followed"] for _, _, kw in calls("on_followed_now")] == [ada]


def test_outer_rollback_discards_a_committed_savepoint(people, drain):
    ada, bob = people
    with pytest.raises(Boom), transaction.atomic():
        with transaction.atomic():
            followed.send(sender=ada, followed=bob)
        raise Boom
    assert drain() == 0
    assert calls() == []


def test_send_outside_a_transaction_behaves_as_an_immediate_commit(people, drain):
    ada, bob = people
    followed.send(sender=ada, followed=bob)
    assert len(calls("on_followed_now")) == 1
    assert drain() == 1
    assert len(calls("on_followed")) == 1


def test_on_commit_delivery_runs_in_process_after_commit_only(people):
    ada, bob = people
    with transaction.atomic():
        followed.send(sender=ada, followed=bob)
        assert calls("on_followed_now") == []
    [(_, sender, kwargs)] = calls("on_followed_now")
    assert (sender, kwargs) == (ada, {"signal": followed, "followed": bob})
    with pytest.raises(Boom), transaction.atomic():
        followed.send(sender=ada, followed=bob)
        raise Boom
    assert len(calls("on_followed_now")) == 1


def test_a_failing_on_commit_receiver_is_logged_and_does_not_break_the_commit(people, caplog):
    def explode(sender, **kwargs):
        raise Boom("after commit")

    outbox.connect(followed, explode, delivery="on_commit", dispatch_uid="explode")
    try:
        ada, bob = people
        with transaction.atomic():
            Person.objects.create(name="cy")
            followed.send(sender=ada, followed=bob)
        assert Person.objects.filter(name="cy").exists()
        assert len(calls("on_followed_now")) == 1
        assert "explode" in caplog.text
    finally:
        outbox.disconnect(followed, explode, dispatch_uid="explode", delivery="on_commit")


def test_m2m_add_remove_and_clear_reach_the_receiver(people, drain):
    ada, bob = people
    cy = Person.objects.create(name="cy")
    ada.following.add(bob, cy)
    ada.following.remove(bob)
    ada.following.clear()
    drain()
    seen = [(kw["action"], kw["pk_set"]) for _, _, kw in calls("on_following_changed")]
    assert seen == [
        ("pre_add", {bob.pk, cy.pk}),
        ("post_add", {bob.pk, cy.pk}),
        ("pre_remove", {bob.pk}),
        ("post_remove", {bob.pk}),
        ("pre_clear", None),
        ("post_clear", None),
    ]
    _, sender, kwargs = calls("on_following_changed")[0]
    assert sender is Person.following.through
    assert kwargs["instance"] == ada and kwargs["model"] is Person and kwargs["reverse"] is False


def test_m2m_reverse_side_is_reported_as_reverse(people, drain):
    ada, bob = people
    bob.followers.add(ada)
    drain()
    _, _, kwargs = calls("on_following_changed")[-1]
    assert kwargs["reverse"] is True and kwargs["instance"] == bob and kwargs["pk_set"] == {ada.pk}


def test_post_delete_receives_the_snapshot_of_the_deleted_row(drain):
    owner = Person.objects.create(name="owner")
    sample = Sample.objects.create(title="gone soon", amount="2.500", owner=owner, data={"k": [1]})
    sample_pk = sample.pk
    sample.delete()
    drain()
    _, sender, kwargs = calls("on_sample")[-1]
    assert sender is Sample and kwargs["signal"].__class__.__name__ == "ModelSignal"
    deleted = kwargs["instance"]
    assert deleted.pk == sample_pk and deleted.title == "gone soon"
    assert str(deleted.amount) == "2.500" and deleted.owner_id == owner.pk and deleted.data == {"k": [1]}
    assert not Sample.objects.filter(pk=sample_pk).exists()


def test_a_saved_instance_is_fetched_fresh_at_dispatch(drain):
    sample = Sample.objects.create(title="first")
    Sample.objects.filter(pk=sample.pk).update(title="changed after the send")
    drain()
    _, _, kwargs = calls("on_sample")[0]
    assert kwargs["created"] is True
    assert kwargs["instance"].title == "changed after the send"


def test_model_signals_write_on_the_database_they_name(drain):
    with transaction.atomic(using="default"):
        Sample.objects.using("default").create(title="x")
    assert Event.objects.using("default").count() == 1


def _remember_login(sender, request, user, **kwargs):
    from tests.testapp import receivers

    receivers.CALLS.append(("login", sender, {"request": request, "user": user}))


def test_user_logged_in_can_be_deferred_with_its_request(drain):
    import tests.test_delivery as here

    outbox.connect(user_logged_in, here._remember_login)
    try:
        user = get_user_model().objects.create(username="ada")
        request = RequestFactory().get("/login/?next=/home/", HTTP_USER_AGENT="pytest")
        user_logged_in.send(sender=user.__class__, request=request, user=user)
        drain()
        [(_, sender, kwargs)] = calls("login")
        assert sender is get_user_model() and kwargs["user"] == user
        assert kwargs["request"].path == "/login/" and kwargs["request"].GET["next"] == "/home/"
        assert kwargs["request"].META["HTTP_USER_AGENT"] == "pytest"
    finally:
        outbox.disconnect(user_logged_in, here._remember_login)


# Strings that stress how the row's values are quoted into the INSERT (queries.py).
AWKWARD = ["it's", "''", "\\", "\\'", "%s", "%(x)s", "{}", "naïve 日本 🎉", "\n\t\r", "E'x'", "$$", "--"]


def test_awkward_strings_arrive_intact(people, drain):
    ada, bob = people
    with transaction.atomic():
        followed.send(sender=ada, followed=bob, notes=AWKWARD, **{"it's": "key"})
    assert drain() == 1
    [(_, _, kwargs)] = calls("on_followed")
    assert kwargs["notes"] == AWKWARD
    assert kwargs["it's"] == "key"


@postgres_only
@pytest.mark.parametrize("conforming", ["on", "off"])
def test_awkward_strings_arrive_intact_whatever_standard_conforming_strings_says(people, drain, conforming):
    ada, bob = people
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL standard_conforming_strings = {conforming}")
        followed.send(sender=ada, followed=bob, notes=AWKWARD)
        followed.send(sender=ada, followed=bob, notes=AWKWARD[::-1])
    assert drain() == 2
    assert [kwargs["notes"] for _, _, kwargs in calls("on_followed")] == [AWKWARD, AWKWARD[::-1]]
