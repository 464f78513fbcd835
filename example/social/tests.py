"""The demo's own tests, written with outbox.testing: ``python manage.py test social``."""

from django.contrib.auth import get_user_model
from django.core import mail
from django.test import TestCase

from outbox import testing

from .models import FollowStats, Profile
from .receivers import count_followers, send_welcome_email
from .signals import followed

User = get_user_model()


class WelcomeEmailTests(TestCase):
    def test_signing_up_sends_an_event_to_the_welcome_receiver(self):
        with testing.capture() as sent:
            user = User.objects.create_user("ada", "ada@example.com")
        [event] = sent.to(send_welcome_email)
        self.assertEqual(event.kwargs["instance"], user)
        self.assertTrue(event.kwargs["created"])
        self.assertEqual(mail.outbox, [])  # captured, not run

    def test_the_welcome_email_goes_out_when_the_event_runs(self):
        User.objects.create_user("ada", "ada@example.com")
        [ran] = testing.drain()
        self.assertEqual([m.to for m in mail.outbox], [["ada@example.com"]])
        # outbox.current_event() gave the receiver its event's idempotency key.
        self.assertEqual(mail.outbox[0].extra_headers["Idempotency-Key"], f"outbox-{ran.id}")

    def test_a_refused_address_fails_with_the_mail_servers_error(self):
        User.objects.create_user("bo", "bo@invalid")
        with self.assertRaisesMessage(ConnectionError, "the mail server refused bo@invalid"):
            testing.drain()


class FollowTests(TestCase):
    def test_following_notifies_and_recounts(self):
        ada = Profile.objects.create(user=User.objects.create_user("ada", "ada@example.com"))
        bo = Profile.objects.create(user=User.objects.create_user("bo", "bo@example.com"))
        testing.drain()  # the welcome emails
        mail.outbox.clear()

        with testing.capture() as sent:
            ada.following.add(bo)
            followed.send(sender=ada, followed=bo)
        self.assertIn(count_followers, [event.func for event in sent])

        testing.drain()
        self.assertEqual(FollowStats.objects.get(profile=bo).followers, 1)
        self.assertEqual([m.subject for m in mail.outbox], ["ada followed you"])
