"""Django settings for the benchmarks: one database per system, chosen by BENCH_DATABASE_URL.

Every peer is configured as its documentation recommends for production on PostgreSQL,
with defaults left alone except where a benchmark needs a knob (worker count, poll-only).
"""

from __future__ import annotations

import os

import dj_database_url

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_ours"),
        # Persistent connections, as Django's deployment checklist advises for every system
        # here; BENCH_CONN_MAX_AGE=0 measures Django's default instead.
        conn_max_age=int(os.environ["BENCH_CONN_MAX_AGE"]) if os.environ.get("BENCH_CONN_MAX_AGE") else None,
    )
}
# BENCH_PREPARE_THRESHOLD=5 lets psycopg prepare the worker's claim (Django's OPTIONS;
# Django's default, None, prepares nothing): see outbox.queries._claim_cursor.
if os.environ.get("BENCH_PREPARE_THRESHOLD"):
    DATABASES["default"]["OPTIONS"] = {"prepare_threshold": int(os.environ["BENCH_PREPARE_THRESHOLD"])}
SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "outbox",
    "django_q",
    "django_tasks_db",
    "procrastinate.contrib.django",
    "bench.benchapp",
]

# Ours: defaults, except the poll interval when a benchmark asks for poll-only figures, and
# claiming ahead when an A/B run turns it off (BENCH_CLAIM_AHEAD=0).
OUTBOX: dict = {}
if os.environ.get("BENCH_OUTBOX_POLL"):
    OUTBOX["POLL_INTERVAL"] = float(os.environ["BENCH_OUTBOX_POLL"])
if os.environ.get("BENCH_CLAIM_AHEAD") == "0":
    OUTBOX["WORKER_CLAIM_AHEAD"] = False

# django-q2 with its ORM broker on the same database (its docs' "Django ORM" broker setup).
Q_CLUSTER = {
    "name": "bench",
    "orm": "default",
    "workers": int(os.environ.get("BENCH_Q2_WORKERS", "1")),
    "timeout": 30,
    "retry": 60,
    "catch_up": False,
    "ack_failures": True,
    "label": "Django Q2",
}

# Django's tasks framework with the django-tasks-db backend.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

# procrastinate: the Django contrib app; tasks live in bench.benchapp.tasks (autodiscovered).
PROCRASTINATE_AUTODISCOVER_MODULE_NAME = "tasks"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
