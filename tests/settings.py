"""Settings for the test suite. The database comes from DATABASE_URL (SQLite by default)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dj_database_url

HERE = Path(__file__).resolve().parent
SQLITE_TEST_FILE = HERE / ".sqlite-test.db"

DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{HERE / '.sqlite.db'}"
DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
# bench/relay.py keeps connections open, as production settings do.
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("OUTBOX_TEST_CONN_MAX_AGE", "0"))
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not :memory:, so that worker processes started by the tests share it.
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("OUTBOX_SQLITE_TEST_NAME", str(SQLITE_TEST_FILE))}
    DATABASES["default"]["OPTIONS"] = {"timeout": 30}

if DATABASES["default"]["ENGINE"].endswith("mysql"):
    # utf8mb4, as docs/databases.md asks of MySQL and MariaDB (Django's default is utf8, 3 bytes).
    DATABASES["default"]["OPTIONS"] = {"charset": "utf8mb4"}
    DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}

# OUTBOX_TEST_PREPARE_THRESHOLD=0: psycopg prepares the claim (Django's OPTIONS; its default
# prepares nothing), for a run of the suite with prepared claims (docs/worker.md).
if DATABASES["default"]["ENGINE"].endswith("postgresql") and os.environ.get("OUTBOX_TEST_PREPARE_THRESHOLD"):
    DATABASES["default"]["OPTIONS"] = {"prepare_threshold": int(os.environ["OUTBOX_TEST_PREPARE_THRESHOLD"])}

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "outbox",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
OUTBOX = {"BACKOFF_BASE_SECONDS": 0.01, "BACKOFF_MAX_SECONDS": 0.05, "POLL_INTERVAL": 0.1}
# Processes the relay tests start read these: the dispatcher and leases of the run.
_FROM_ENV: dict[str, Callable[[str], Any]] = {
    "DISPATCHER": str,
    "LEASE_SECONDS": float,
    "RELAY_LEASE_SECONDS": float,
    "RELAY_TASK_SIZE": int,
    "RELAY_QUEUE_LIMIT": int,
    "WORKER_ANALYZE": lambda value: value == "1",
    "WORKER_CLAIM_AHEAD": lambda value: value == "1",
}
for _name, _kind in _FROM_ENV.items():
    if os.environ.get(f"OUTBOX_TEST_{_name}"):
        OUTBOX[_name] = _kind(os.environ[f"OUTBOX_TEST_{_name}"])

# django-q2, for the relay tests. OUTBOX_TEST_Q2_BROKER picks the broker ("orm" or
# "redis"); Redis uses a database number of its own (OUTBOX_TEST_REDIS_URL), never db 0.
Q_CLUSTER = {
    "name": "outbox-tests",
    "workers": int(os.environ.get("OUTBOX_TEST_Q2_WORKERS", "4")),
    "timeout": 60,
    "retry": 90,
    "max_attempts": 0,
    "poll": 0.05,
    # Few tasks held in the cluster's memory: the rest wait in the broker, where the
    # relay tests kill or flush them.
    "queue_limit": int(os.environ.get("OUTBOX_TEST_Q2_QUEUE_LIMIT", "4")),
    "save_limit": 0,
    "catch_up": False,
    "label": "Django Q2",
    "log_level": os.environ.get("OUTBOX_TEST_Q2_LOG_LEVEL", "WARNING"),
}
if os.environ.get("OUTBOX_TEST_Q2_BROKER", "orm") == "redis":
    Q_CLUSTER["redis"] = os.environ.get("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
else:
    Q_CLUSTER["orm"] = "default"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"outbox": {"handlers": ["console"], "level": os.environ.get("OUTBOX_LOG_LEVEL", "WARNING")}},
}
