"""The site's own signals."""

import django.dispatch

#: Sent by a Profile when it follows another: ``followed.send(sender=profile, followed=other)``.
followed = django.dispatch.Signal()
