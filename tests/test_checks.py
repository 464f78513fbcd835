"""System checks: each misconfiguration is reported with its id and a hint."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.test import override_settings

from outbox import checks
from outbox.registry import ReceiverSpec, registry
from tests.conftest import ROOT, worker_env


def ids(messages):
    return [m.id for m in messages]


def test_a_clean_configuration_has_no_errors():
    assert checks.check_installed() == []
    assert checks.check_receivers_importable() == []
    assert checks.check_settings() == []


@pytest.mark.processes
def test_not_in_installed_apps_is_outbox_e001():
    script = (
        "import django; from django.conf import settings;"
        "settings.configure(INSTALLED_APPS=['django.contrib.contenttypes']);"
        "django.setup(); import outbox;"
        "from django.core import checks;"
        "print([m.id for m in checks.run_checks()])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "outbox.E001" in out.stdout


def test_psycopg_missing_for_postgresql_is_outbox_e002(monkeypatch):
    pg = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}}
    monkeypatch.setattr(checks.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(checks, "django_settings", SimpleNamespace(DATABASES=pg))
    [error] = checks.check_psycopg()
    assert error.id == "outbox.E002" and "psycopg" in error.msg and error.hint


def receiver_that_moves(sender, **kwargs):
    pass


def test_a_receiver_not_importable_by_its_path_is_outbox_e003():
    spec = ReceiverSpec("tests.test_checks.no_such_name", receiver_that_moves)
    registry.receivers[spec.path] = spec
    try:
        [error] = checks.check_receivers_importable()
    finally:
        del registry.receivers[spec.path]
    assert error.id == "outbox.E003" and "tests.test_checks.no_such_name" in error.msg


@pytest.mark.parametrize(
    "outbox_setting, fragment",
    [
        ({"MAX_ATTEMPS": 3}, "is not a setting"),
        ({"MAX_ATTEMPTS": 0}, "positive integer"),
        ({"LEASE_SECONDS": "60"}, "positive number"),
        ({"POLL_INTERVAL": float("nan")}, "positive number"),
        ({"BATCH_SIZE": True}, "positive integer"),
        ({"RETRY_AFTER_MAX_SECONDS": 0}, "positive number"),
        ({"DATABASE": 3}, "must be a string"),
    ],
)
def test_invalid_settings_are_outbox_e004(outbox_setting, fragment):
    with override_settings(OUTBOX=outbox_setting):
        [error] = checks.check_settings()
    [key] = outbox_setting
    assert error.id == "outbox.E004" and fragment in error.msg and key in error.msg and error.hint


def test_a_misspelt_setting_is_outbox_e004_suggesting_the_right_name():
    with override_settings(OUTBOX={"MAX_ATTEMPS": 3}):
        [error] = checks.check_settings()
    assert "Did you mean 'MAX_ATTEMPTS'?" in error.hint


def test_an_unknown_database_alias_is_outbox_e005():
    with override_settings(OUTBOX={"DATABASE": "replica"}):
        assert ids(checks.check_settings()) == ["outbox.E005"]


@pytest.mark.django_db(transaction=True)
def test_unapplied_migrations_are_outbox_w001():
    assert checks.check_migrations(databases=["default"]) == []
    call_command("migrate", "outbox", "0001", verbosity=0)
    try:
        [warning] = checks.check_migrations(databases=["default"])
        assert warning.id == "outbox.W001" and "migrate outbox" in warning.hint
    finally:
        call_command("migrate", "outbox", verbosity=0)


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_the_worker_refuses_to_start_on_an_unmigrated_database():
    call_command("migrate", "outbox", "zero", verbosity=0)
    try:
        env = {**os.environ, **worker_env()}
        out = subprocess.run(
            [sys.executable, "-m", "django", "run_outbox", "--once", "--settings=tests.settings"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=60,
        )
    finally:
        call_command("migrate", "outbox", verbosity=0)
    assert out.returncode != 0
    assert "outbox.W001" in out.stderr or "migrate outbox" in out.stderr


def _pretend(monkeypatch, vendor, version=None, mariadb=False):
    """Make the default connection look like another database (nothing is queried)."""
    from django.db import connection

    monkeypatch.setattr(connection, "vendor", vendor)
    if version is not None:
        monkeypatch.setattr(connection, "mysql_version", version, raising=False)
        monkeypatch.setattr(connection, "mysql_is_mariadb", mariadb, raising=False)


@pytest.mark.parametrize(
    ("vendor", "version", "mariadb", "named"),
    [
        ("oracle", None, False, "'oracle'"),
        ("microsoft", None, False, "'microsoft'"),
        ("mysql", (8, 0, 0), False, "MySQL 8.0.0"),
        ("mysql", (10, 5, 22), True, "MariaDB 10.5.22"),
    ],
)
def test_an_unsupported_database_is_outbox_e008_with_a_hint(monkeypatch, vendor, version, mariadb, named):
    _pretend(monkeypatch, vendor, version, mariadb)
    [error] = checks.check_database()
    assert error.id == "outbox.E008" and named in error.msg and error.hint


@pytest.mark.parametrize(
    ("version", "mariadb"), [((8, 0, 1), False), ((8, 4, 3), False), ((10, 6, 0), True), ((11, 4, 2), True)]
)
def test_mysql_8_0_1_and_mariadb_10_6_and_later_pass(monkeypatch, version, mariadb):
    _pretend(monkeypatch, "mysql", version, mariadb)
    assert checks.check_database() == []


def test_the_database_under_test_passes():
    assert checks.check_database() == []


def test_run_outbox_refuses_to_start_on_an_unsupported_database(monkeypatch):
    from django.core.management.base import CommandError

    _pretend(monkeypatch, "mysql", (10, 5, 0), True)
    with pytest.raises(CommandError, match=r"refusing to start: .*MariaDB 10\.5\.0.*outbox\.E008"):
        call_command("run_outbox", "--once")
