"""Receivers the tests connect. CALLS records in-process calls with their arguments."""

import os
import time

from django.db.models.signals import m2m_changed, post_delete, post_save

import outbox

from .models import Call, Person, Sample
from .signals import charged, followed, pinged, work

CALLS = []
FAILURES = {"remaining": 0}


@outbox.receiver(followed)
def on_followed(sender, **kwargs):
    CALLS.append(("on_followed", sender, kwargs))


@outbox.receiver(followed, delivery="on_commit")
def on_followed_now(sender, **kwargs):
    CALLS.append(("on_followed_now", sender, kwargs))


@outbox.receiver(m2m_changed, sender=Person.following.through)
def on_following_changed(sender, **kwargs):
    CALLS.append(("on_following_changed", sender, kwargs))


@outbox.receiver(post_save, sender=Sample)
@outbox.receiver(post_delete, sender=Sample)
def on_sample(sender, **kwargs):
    CALLS.append(("on_sample", sender, kwargs))


@outbox.receiver(pinged, max_attempts=3)
def flaky(sender, **kwargs):
    if FAILURES["remaining"] > 0:
        FAILURES["remaining"] -= 1
        raise RuntimeError("the mail server is down")
    CALLS.append(("flaky", sender, kwargs))


def record(sender, key, sleep=0.0, mark_start=False, **kwargs):
    """Recorded durably: used by tests that run real worker processes. With ``mark_start`` a
    ``Call(receiver="started")`` row says the receiver is running before it sleeps: a row's
    ``running`` status only says it was claimed."""
    if mark_start:
        Call.objects.create(receiver="started", key=key, worker_pid=os.getpid())
    if sleep:
        time.sleep(sleep)
    Call.objects.create(receiver="record", key=key, worker_pid=os.getpid())


outbox.connect(work, record)


def charge(sender, key, **kwargs):
    """Fails until the test marks ``key`` fixed with a ``Call(receiver="fixed")`` row:
    durable across processes, like a remote service that comes back."""
    if not Call.objects.filter(receiver="fixed", key=key).exists():
        raise RuntimeError(f"the payment gateway rejected {key}")
    Call.objects.create(receiver="charge", key=key, worker_pid=os.getpid())


outbox.connect(charged, charge, max_attempts=2)
