"""Receivers of the demo. None of them runs inside the request's transaction."""

from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.db.models.signals import m2m_changed, post_save

import outbox

from .models import FollowStats, Profile
from .signals import followed


def _mail(to, subject, body):
    # The demo's mail server refuses one domain, so that some events fail and retry.
    if to.endswith("@invalid"):
        raise ConnectionError(f"the mail server refused {to}")
    # The event's idempotency key is the same on every retry and replay of this event:
    # a mail provider that honours such a header sends the message once.
    event = outbox.current_event()
    headers = {"Idempotency-Key": event.idempotency_key} if event is not None else {}
    EmailMessage(subject, body, None, [to], headers=headers).send()


def _created(sender, created, **kwargs):
    # Checked at send time: a later save of the user writes no event at all.
    return created


@outbox.receiver(post_save, sender=get_user_model(), when=_created)
def send_welcome_email(sender, instance, created, **kwargs):
    """Deferred: a new user gets a welcome email, only once the signup committed."""
    _mail(instance.email, "Welcome!", f"Hello {instance.username}, welcome aboard.")


@outbox.receiver(followed)
def email_follow_notification(sender, followed, **kwargs):
    """Deferred: 'X followed you', never for a follow that rolled back."""
    name = sender.user.username
    _mail(followed.user.email, f"{name} followed you", f"{name} is now following you.")


def _after_change(sender, action, **kwargs):
    # m2m_changed is sent before and after each change: only the "after" ones write an event.
    return action in ("post_add", "post_remove", "post_clear")


@outbox.receiver(m2m_changed, sender=Profile.following.through, when=_after_change, atomic=True)
def count_followers(sender, instance, action, reverse, pk_set, **kwargs):
    """Deferred and atomic: its writes commit with the event's "done", once. It also recounts
    rather than increments, which would keep a retry harmless without atomic=True."""
    if reverse:
        targets = [instance]
    elif pk_set is None:  # post_clear: pk_set is None; recount everyone
        targets = list(Profile.objects.all())
    else:
        targets = list(Profile.objects.filter(pk__in=pk_set))
    for profile in targets:
        FollowStats.objects.update_or_create(
            profile=profile, defaults={"followers": profile.followers.count()}
        )
