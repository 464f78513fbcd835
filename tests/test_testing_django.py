"""outbox.testing from django.test.TestCase classes: run by pytest-django here, and by
Django's own runner (``manage.py test``) in test_testing_helpers."""

from __future__ import annotations

from django.test import TestCase, TransactionTestCase

from outbox import testing
from tests.testapp.models import Call, Person
from tests.testapp.testing_receivers import announced, exploded, greeted, welcome


class DrainInTestCase(TestCase):
    def test_drain_runs_receivers_in_the_test_transaction(self):
        greeted.send(sender=Person, person=Person.objects.create(name="ada"))
        ran = testing.drain()
        self.assertEqual([r.ok for r in ran], [True])
        self.assertEqual(list(Call.objects.values_list("key", flat=True)), ["ada"])

    def test_a_receivers_exception_is_raised(self):
        exploded.send(sender=None)
        with self.assertRaisesMessage(ValueError, "the receiver's own error"):
            testing.drain()

    def test_capture_and_on_commit_receivers(self):
        with testing.capture() as sent, self.captureOnCommitCallbacks(execute=True):
            greeted.send(sender=Person, person=Person.objects.create(name="bo"))
            announced.send(sender=None, key="now")
        # The on_commit receiver wrote no event; it ran when the callbacks were executed.
        self.assertEqual([event.func for event in sent], [welcome])
        self.assertEqual(sent[0].kwargs["person"].name, "bo")
        self.assertEqual(list(Call.objects.values_list("receiver", "key")), [("announce_now", "now")])


class DrainInTransactionTestCase(TransactionTestCase):
    def test_drain_commits_as_the_worker_does(self):
        greeted.send(sender=Person, person=Person.objects.create(name="cy"))
        self.assertEqual(len(testing.drain()), 1)
        self.assertEqual(list(Call.objects.values_list("key", flat=True)), ["cy"])
