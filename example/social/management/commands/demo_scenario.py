"""The demo's 'web requests': signups and follows, some of which roll back."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from social.models import Profile
from social.signals import followed


class RequestFailed(Exception):
    """Stands for anything that makes a request's transaction roll back."""


def signup(username, email=None):
    with transaction.atomic():
        user = get_user_model().objects.create(username=username, email=email or f"{username}@social.example")
        return Profile.objects.create(user=user)


def follow(profile, other):
    profile.following.add(other)
    followed.send(sender=profile, followed=other)


class Command(BaseCommand):
    help = "Play the demo's requests against a fresh database."

    def step(self, text, committed=True):
        mark = self.style.SUCCESS("commit  ") if committed else self.style.ERROR("rollback")
        self.stdout.write(f"  {mark} {text}")

    def handle(self, *args, **options):
        self.stdout.write(self.style.MIGRATE_HEADING("1. The web process handles requests"))
        alice, bob, carol = signup("alice"), signup("bob"), signup("carol")
        self.step("alice, bob and carol sign up")

        try:
            with transaction.atomic():
                signup("dave")
                raise RequestFailed("the signup form failed after the user was saved")
        except RequestFailed:
            self.step("dave signs up, then the request fails", committed=False)

        with transaction.atomic():
            follow(alice, bob)
        self.step("alice follows bob")

        try:
            with transaction.atomic():
                follow(carol, alice)
                raise RequestFailed("the request crashed after the follow")
        except RequestFailed:
            self.step("carol follows alice, then the request crashes", committed=False)

        with transaction.atomic():
            follow(bob, carol)
            try:
                with transaction.atomic():  # a savepoint
                    follow(bob, alice)
                    raise RequestFailed("undo just this follow")
            except RequestFailed:
                pass
        self.step("bob follows carol (committed) and alice (in a savepoint that rolls back)")

        erin = signup("erin", email="erin@invalid")
        with transaction.atomic():
            follow(alice, erin)
        self.step("erin signs up with an address the mail server refuses; alice follows erin")
