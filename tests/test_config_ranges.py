"""Numbers too large (or too small) for what holds them are refused where they are given:
at connect, by ``manage.py check``, by the worker before it starts and by argparse; never a
poisoned transaction, a dead worker or a traceback."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import override_settings

import outbox
from outbox.checks import check_settings
from outbox.execution import backoff_delay
from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import ROOT, worker_env
from tests.testapp.models import Person
from tests.testapp.signals import work

NEVER = 2**31  # one more than a PositiveIntegerField (PostgreSQL integer) holds
MAX_ATTEMPTS_RANGE = "max_attempts must be a whole number from 1 to 2147483647"


def ranged(sender, **kwargs):
    """Connected with out-of-range options: never registered."""


@pytest.mark.parametrize("max_attempts", [NEVER, True, 2.0, 0])
def test_max_attempts_the_column_cannot_hold_is_refused_at_connect(max_attempts):
    with pytest.raises(outbox.RegistrationError, match=MAX_ATTEMPTS_RANGE):
        outbox.connect(work, ranged, max_attempts=max_attempts)
    assert "tests.test_config_ranges.ranged" not in outbox.registry.registry.receivers


@pytest.mark.parametrize("timeout", [1e12, float("nan"), float("inf"), True, 0])
def test_a_timeout_setitimer_cannot_hold_is_refused_at_connect(timeout):
    with pytest.raises(outbox.RegistrationError, match=r"timeout must be a number of seconds"):
        outbox.connect(work, ranged, timeout=timeout)


@pytest.mark.django_db(transaction=True)
def test_a_max_attempts_setting_the_column_cannot_hold_fails_the_send_before_it_writes():
    refused = r"OUTBOX\['MAX_ATTEMPTS'\] = 2147483648 is out of range.*outbox.E007"
    with override_settings(OUTBOX={"MAX_ATTEMPTS": NEVER}), transaction.atomic():
        Person.objects.create(name="kept")
        with pytest.raises(ImproperlyConfigured, match=refused):
            work.send(sender=None, key="k")
        # Nothing reached the database: the transaction is not aborted and commits.
        Person.objects.create(name="also kept")
    assert Person.objects.count() == 2
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    "key, value",
    [
        ("MAX_ATTEMPTS", NEVER),
        ("BACKOFF_BASE_SECONDS", 1e12),
        ("BACKOFF_MAX_SECONDS", float("inf")),
        ("RETRY_AFTER_MAX_SECONDS", 1e12),
        ("RETRY_AFTER_MAX_SECONDS", float("inf")),
        ("LEASE_SECONDS", 1e12),
        ("LEASE_SECONDS", 0.5),
        ("POLL_INTERVAL", 86400.5),
        ("POLL_INTERVAL", float("inf")),
        ("BATCH_SIZE", 10**6),
        ("CONCURRENCY", 10**6),
        ("MAX_PAYLOAD_BYTES", 2**40),
        ("RELAY_LEASE_SECONDS", 1e12),
        ("RELAY_TASK_SIZE", 10**6),
        ("RELAY_QUEUE_LIMIT", 10**9),
        ("PRUNE_AFTER", 1e12),
        ("PRUNE_AFTER", datetime.timedelta(days=999_999)),
        ("PRUNE_INTERVAL", 1e12),
        ("PRUNE_BATCH_SIZE", 10**7),
        ("NOTIFY_CHANNEL", ""),
        ("NOTIFY_CHANNEL", "x" * 64),
    ],
)
def test_a_setting_out_of_its_range_is_outbox_e007_with_the_range_in_its_hint(key, value):
    with override_settings(OUTBOX={key: value}):
        [error] = check_settings()
        with pytest.raises(ImproperlyConfigured, match=rf"OUTBOX\['{key}'\].*outbox.E007"):
            getattr(outbox.conf.settings, key)
    assert error.id == "outbox.E007"
    assert f"OUTBOX[{key!r}]" in error.msg
    assert key in error.hint and ("from" in error.hint or "at most" in error.hint)


def test_the_largest_values_in_range_pass_the_check():
    largest = {
        "MAX_ATTEMPTS": 2**31 - 1,
        "BACKOFF_MAX_SECONDS": 315_360_000,
        "RETRY_AFTER_MAX_SECONDS": 315_360_000,
        "LEASE_SECONDS": 1,
        "RELAY_LEASE_SECONDS": 315_360_000.0,
        "POLL_INTERVAL": 86400,
        "BATCH_SIZE": 10_000,
        "CONCURRENCY": 1000,
        "PRUNE_AFTER": datetime.timedelta(days=3650),
        "NOTIFY_CHANNEL": "x" * 63,
    }
    with override_settings(OUTBOX=largest):
        assert check_settings() == []
        assert outbox.conf.settings.MAX_ATTEMPTS == 2**31 - 1


def test_the_backoff_of_the_largest_max_attempts_is_the_cap():
    with override_settings(OUTBOX={"BACKOFF_BASE_SECONDS": 2.0, "BACKOFF_MAX_SECONDS": 3600.0}):
        for attempts in (1100, 2**31 - 1):
            assert 1800 <= backoff_delay(attempts) <= 3600


@pytest.mark.django_db(transaction=True)
def test_a_worker_refuses_to_start_on_a_setting_out_of_range():
    too_long = override_settings(OUTBOX={"LEASE_SECONDS": 1e12})
    with too_long, pytest.raises(ImproperlyConfigured, match="LEASE_SECONDS"):
        Worker(once=True, listen=False).run()
    with pytest.raises(ImproperlyConfigured, match=r"lease_seconds"):
        Worker(once=True, listen=False, lease_seconds=1e12).run()


def manage(*args, env=None):
    """A management command in its own process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args, "--settings=tests.settings"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **worker_env(), **(env or {})},
        timeout=120,
    )


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_the_worker_process_refuses_to_start_on_a_setting_out_of_range_naming_it():
    out = manage("run_outbox", "--once", env={"OUTBOX_TEST_LEASE_SECONDS": "1e12"})
    assert out.returncode != 0
    assert "outbox.E007" in out.stderr and "LEASE_SECONDS" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.processes
@pytest.mark.parametrize(
    "args, message",
    [
        (["outbox_prune", "--older-than", "999999999w"], "--older-than: '999999999w' is longer than"),
        (["outbox_replay", "--since", "99999999999d"], "--since: '99999999999d' is longer than"),
        (["outbox_discard", "--since", "99999999999w"], "--since: '99999999999w' is longer than"),
        (["outbox_replay", "--id", "99999999999999999999"], "--id: '99999999999999999999'"),
        (["run_outbox", "--lease-seconds", "1e12"], "--lease-seconds: '1e12' must be"),
        (["run_outbox", "--poll-interval", "nan"], "--poll-interval: 'nan' must be"),
        (["run_outbox", "--batch-size", "1000000000"], "--batch-size: '1000000000' must be"),
        (["outbox_prune", "--older-than", "1d", "--batch-size", "0"], "--batch-size: '0' must be"),
    ],
)
def test_huge_command_line_values_are_usage_errors_not_tracebacks(args, message):
    out = manage(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"error: argument {message}" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
