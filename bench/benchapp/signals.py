from __future__ import annotations

import django.dispatch

work1 = django.dispatch.Signal()  # one deferred receiver
work3 = django.dispatch.Signal()  # three deferred receivers
work_now = django.dispatch.Signal()  # one on_commit receiver
ping = django.dispatch.Signal()  # latency probe
