"""Receivers for the tests of outbox.testing, on signals of their own (so that connecting
them adds no event to any other test's sends). Imported by those tests only."""

import django.dispatch

import outbox

from .models import Call, Keyed

greeted = django.dispatch.Signal()
exploded = django.dispatch.Signal()
relayed = django.dispatch.Signal()
looped = django.dispatch.Signal()
broke_db = django.dispatch.Signal()
sorted_out = django.dispatch.Signal()
announced = django.dispatch.Signal()


@outbox.receiver(greeted)
def welcome(sender, person, note="", **kwargs):
    Call.objects.create(receiver="welcome", key=f"{person.name}{note}", worker_pid=0)


def _fail_deep_inside():
    raise ValueError("the receiver's own error")


@outbox.receiver(exploded, max_attempts=2)
def explode(sender, **kwargs):
    _fail_deep_inside()


@outbox.receiver(relayed)
def relay_on(sender, person, **kwargs):
    """Sends another event from inside a receiver: drain() runs that one too."""
    greeted.send(sender=sender, person=person, note="+relayed")


@outbox.receiver(looped)
def loop_forever(sender, **kwargs):
    looped.send(sender=sender)


@outbox.receiver(broke_db, max_attempts=1)
def break_the_database(sender, key, **kwargs):
    """A database error inside the receiver (a duplicate primary key)."""
    Keyed.objects.create(key=key)
    Keyed.objects.create(key=key)


def by_account(sender, account, **kwargs):
    return account


@outbox.receiver(sorted_out, queue="mail", ordering_key=by_account)
def mail_step(sender, account, step, **kwargs):
    Call.objects.create(receiver="mail_step", key=f"{account}:{step}", worker_pid=0)


@outbox.receiver(announced, delivery="on_commit")
def announce_now(sender, key, **kwargs):
    Call.objects.create(receiver="announce_now", key=key, worker_pid=0)
