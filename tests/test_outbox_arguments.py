"""Operator command arguments and settings that are wrong fail clearly, before touching
the database: usage errors that say what is accepted, system checks that name the setting."""

from __future__ import annotations

import datetime

import pytest
from django.test import override_settings

from outbox.checks import check_settings
from outbox.management.arguments import duration, format_duration, id_range
from tests.operating import run


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30),
        ("30m", 1800),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("1h30m", 5400),
        ("1.5h", 5400),
    ],
)
def test_durations_read_as_a_number_and_a_unit(text, seconds):
    assert duration(text) == datetime.timedelta(seconds=seconds)
    assert duration(format_duration(duration(text))) == duration(text)


def test_id_ranges_are_inclusive():
    assert id_range("10-20") == (10, 20)
    assert id_range("15") == (15, 15)


@pytest.mark.parametrize("bad", ["7", "seven days", "7x", "-1d", "", "1d-2h"])
def test_bad_durations_are_usage_errors_that_say_what_is_accepted(bad):
    result = run("outbox_prune", f"--older-than={bad}")
    assert result.code == 1  # call_command; from the command line argparse exits with 2
    assert "is not a duration: use a number and a unit (s, m, h, d or w)" in result.err


@pytest.mark.parametrize(
    "key, value",
    [
        ("PRUNE_AFTER", "7d"),
        ("PRUNE_AFTER", 0),
        ("PRUNE_AFTER", datetime.timedelta(0)),
        ("PRUNE_AFTER", True),
        ("PRUNE_INTERVAL", 0),
        ("PRUNE_BATCH_SIZE", 0),
        ("PRUNE_BATCH_SIZE", 10.5),
    ],
)
def test_invalid_pruning_settings_fail_the_system_check(key, value):
    with override_settings(OUTBOX={key: value}):
        [error] = check_settings()
    assert error.id == "outbox.E004"
    assert key in error.msg


@pytest.mark.parametrize("value", [None, 3600, 0.5, datetime.timedelta(days=7)])
def test_valid_prune_after_settings_pass_the_system_check(value):
    with override_settings(OUTBOX={"PRUNE_AFTER": value, "PRUNE_INTERVAL": 60, "PRUNE_BATCH_SIZE": 500}):
        assert check_settings() == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--id", "20-10"], "the range is empty"),
        (["--id", "ten"], "is not an id or an id range such as 10-20"),
        (["--since", "yesterday"], "is neither a duration (such as 2h or 7d) nor a date or datetime"),
        (["--status", "lost"], "invalid choice: 'lost'"),
    ],
)
def test_bad_filters_are_usage_errors(args, message):
    result = run("outbox_replay", *args)
    assert result.code == 1
    assert message in result.err
