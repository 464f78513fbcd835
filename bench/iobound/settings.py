"""Django settings for the I/O-bound phase: one database per system (BENCH_DATABASE_URL).

Every system with its documented defaults, except the knob the phase turns (concurrency).
"""

from __future__ import annotations

import os

import dj_database_url

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_io_ours"),
        conn_max_age=None,  # persistent connections, as Django's deployment checklist advises
    )
}
SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "outbox",
    "django_q",
    "procrastinate.contrib.django",
    "bench.iobound.apps.IOBoundConfig",
]
OUTBOX: dict = {}

# django-q2, ORM broker on the same database (so that async_task joins the transaction).
Q_CLUSTER = {
    "name": "bench_io",
    "orm": "default",
    "workers": int(os.environ.get("BENCH_Q2_WORKERS", "1")),
    "timeout": 30,
    "retry": 60,
    "catch_up": False,
    "label": "Django Q2",
}

# Celery with Redis (BENCH_REDIS, a database of its own); one queue, named for this phase.
CELERY_BROKER_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench_io")
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

PROCRASTINATE_AUTODISCOVER_MODULE_NAME = "tasks"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
