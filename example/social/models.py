"""A tiny social network: profiles that follow each other."""

from django.conf import settings
from django.db import models


class Profile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    following = models.ManyToManyField("self", symmetrical=False, related_name="followers", blank=True)

    def __str__(self):
        return self.user.username


class FollowStats(models.Model):
    """Follower counts, kept by a deferred m2m_changed receiver."""

    profile = models.OneToOneField(Profile, on_delete=models.CASCADE, related_name="stats")
    followers = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"{self.profile}: {self.followers} followers"


class SentEmail(models.Model):
    """What the demo's email backend 'sent' (see social/mail.py)."""

    to = models.CharField(max_length=254)
    subject = models.CharField(max_length=200)
    body = models.TextField()
    sent_by_pid = models.IntegerField()
    sent_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"to {self.to}: {self.subject}"
