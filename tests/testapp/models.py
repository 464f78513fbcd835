"""Models the tests send signals about."""

import uuid

from django.db import models


class Person(models.Model):
    name = models.CharField(max_length=100)
    following = models.ManyToManyField("self", symmetrical=False, related_name="followers", blank=True)

    def __str__(self):
        return self.name


class Sample(models.Model):
    """One field of each kind a snapshot must carry."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    title = models.CharField(max_length=100)
    amount = models.DecimalField(max_digits=10, decimal_places=3, null=True)
    when = models.DateTimeField(null=True)
    day = models.DateField(null=True)
    duration = models.DurationField(null=True)
    data = models.JSONField(null=True)
    attachment = models.FileField(upload_to="x", blank=True)
    owner = models.ForeignKey(Person, null=True, on_delete=models.SET_NULL)

    def __str__(self):
        return self.title


class Call(models.Model):
    """A receiver call recorded durably, for tests that run real worker processes."""

    receiver = models.CharField(max_length=100)
    key = models.CharField(max_length=100, db_index=True)
    worker_pid = models.IntegerField()

    def __str__(self):
        return f"{self.receiver}({self.key})"


class Keyed(models.Model):
    """A model whose primary key is text, for admin links to keys holding "/", ".." or "?"."""

    key = models.CharField(primary_key=True, max_length=100)

    def __str__(self):
        return self.key
