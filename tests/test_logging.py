"""``run_outbox`` logging: the project's ``LOGGING`` rules unless ``-v`` is given, nothing
left changed after the command returns, and one INFO line per batch, not per event."""

from __future__ import annotations

import logging

import pytest
from django.core.management import call_command
from django.db import transaction

from tests.testapp.models import Call
from tests.testapp.signals import charged, work

pytestmark = pytest.mark.django_db(transaction=True)

outbox_logger = logging.getLogger("outbox")


@pytest.fixture
def configured_warning():
    """The ``outbox`` logger as ``LOGGING`` leaves it in tests/settings.py: WARNING."""
    level, handlers = outbox_logger.level, list(outbox_logger.handlers)
    outbox_logger.setLevel(logging.WARNING)
    yield
    outbox_logger.setLevel(level)
    outbox_logger.handlers[:] = handlers


def _records(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "outbox" and r.levelno == level]


def _send(count: int) -> None:
    with transaction.atomic():
        for i in range(count):
            work.send(sender=None, key=f"k{i}")


@pytest.mark.parametrize("verbosity", [None, "0", "2"], ids=["no -v", "-v 0", "-v 2"])
@pytest.mark.parametrize("configured", [logging.NOTSET, logging.ERROR], ids=["not configured", "ERROR"])
def test_the_command_leaves_the_outbox_logger_as_it_found_it(verbosity, configured):
    level, handlers, root_handlers = outbox_logger.level, list(outbox_logger.handlers), logging.root.handlers
    outbox_logger.setLevel(configured)
    try:
        call_command("run_outbox", "--once", *(["-v", verbosity] if verbosity else []))
        assert (outbox_logger.level, outbox_logger.handlers) == (configured, handlers)
        assert logging.root.handlers == root_handlers
    finally:
        outbox_logger.setLevel(level)
        outbox_logger.handlers[:] = handlers


def test_logging_at_warning_and_no_v_logs_no_info_lines(configured_warning, caplog):
    _send(3)
    call_command("run_outbox", "--once")
    assert Call.objects.count() == 3
    assert _records(caplog, logging.INFO) == []


def test_an_explicit_v_overrides_logging(configured_warning, caplog):
    _send(1)
    call_command("run_outbox", "--once", "-v", "1")
    assert any(" on database " in line for line in _records(caplog, logging.INFO))


def test_v2_logs_each_event_at_debug(configured_warning, caplog):
    _send(2)
    call_command("run_outbox", "--once", "-v", "2")
    per_event = [line for line in _records(caplog, logging.DEBUG) if line.startswith("event ")]
    assert len(per_event) == 2 and all(" done in " in line for line in per_event)


def test_a_batch_logs_one_info_line_with_its_events_failures_and_duration(configured_warning, caplog):
    with transaction.atomic():
        _send(3)
        charged.send(sender=None, key="declined")  # fails, retried once, then fails for good
    call_command("run_outbox", "--once", "-v", "1", "--batch-size", "10")
    info = _records(caplog, logging.INFO)
    batches = [line for line in info if line.startswith("batch of ")]
    assert [line for line in info if line not in batches and " on database " not in line] == [
        line for line in info if line.startswith("worker ") and " stopped after " in line
    ], "only the start, the stop and one line per batch"
    first = batches[0]
    assert first.startswith("batch of 4 events: 3 done, 1 failed in "), first
    assert first.endswith(" ms")
    assert not any(line.startswith("event ") for line in info)
