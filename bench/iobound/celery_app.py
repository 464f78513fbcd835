"""Celery, as its "First steps with Django" sets it up, with the Redis broker.

``celery -A bench.iobound.celery_app worker --pool threads|prefork --concurrency N``.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from . import probe

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.iobound.settings")

app = Celery("bench_io")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(name="bench_io.sleep_sync", ignore_result=True)
def sleep_sync(n):
    time.sleep(probe.WAIT)
    probe.done(n)
