"""Settings of bench/databases.py: ours alone, on the database BENCH_DATABASE_URL names."""

from __future__ import annotations

import os

import dj_database_url

DATABASES = {"default": dj_database_url.parse(os.environ["BENCH_DATABASE_URL"], conn_max_age=None)}
if DATABASES["default"]["ENGINE"].endswith("mysql"):
    DATABASES["default"]["OPTIONS"] = {"charset": "utf8mb4"}
SECRET_KEY = "bench-only"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "outbox", "bench.benchapp"]
OUTBOX = {"POLL_INTERVAL": 0.2}
SILENCED_SYSTEM_CHECKS = ["models.W036", "models.W037"]  # MySQL: migration 0009's indexes instead
