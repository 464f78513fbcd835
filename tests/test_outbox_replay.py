"""``manage.py outbox_replay`` and ``outbox_discard``: the admin's actions from a shell,
on every event matching the filters, through ``outbox.operations``."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from outbox.models import Event
from tests.conftest import calls
from tests.operating import FLAKY, ON_FOLLOWED, done, drain_all, failed, ping, run
from tests.testapp.models import Person
from tests.testapp.signals import followed

pytestmark = pytest.mark.django_db(transaction=True)


def statuses(ids) -> list[str]:
    by_id = dict(Event.objects.filter(pk__in=ids).values_list("pk", "status"))
    return [by_id[pk] for pk in ids]


def test_replays_failed_events_by_default_and_the_worker_runs_them_again():
    broken = failed(2)
    ok = done(1)
    result = run("outbox_replay")
    assert result.out == "replay: 2 changed (2 failed)\n"
    assert statuses(broken) == ["pending", "pending"]
    assert statuses(ok) == ["done"]
    assert set(Event.objects.filter(pk__in=broken).values_list("attempts", flat=True)) == {0}
    # The last error stays for reference until the next attempt overwrites it.
    assert Event.objects.get(pk=broken[0]).last_error == "RuntimeError: the mail server is down"
    drain_all()
    assert statuses(broken) == ["done", "done"]
    assert len(calls("flaky")) == 3


def test_dry_run_says_how_many_would_change_by_status_and_changes_nothing():
    broken = failed(2)
    waiting = ping(1)
    result = run("outbox_replay", "--status", "failed", "--status", "pending", "--dry-run")
    assert result.out == "replay: 3 would change (2 failed, 1 pending)\n"
    assert statuses(broken + waiting) == ["failed", "failed", "pending"]


def test_filters_by_receiver_and_signal():
    ada, bob = Person.objects.create(name="ada"), Person.objects.create(name="bob")
    followed.send(sender=ada, followed=bob)
    ping(1)
    Event.objects.update(status="failed", finished_at=timezone.now())
    run("outbox_replay", "--receiver", ON_FOLLOWED)
    assert dict(Event.objects.values_list("receiver", "status")) == {ON_FOLLOWED: "pending", FLAKY: "failed"}
    run("outbox_replay", "--signal", "tests.testapp.signals.pinged")
    assert set(Event.objects.values_list("status", flat=True)) == {"pending"}


def test_filters_by_id_ranges_and_single_ids():
    ids = failed(5)
    run("outbox_replay", "--id", f"{ids[0]}-{ids[1]}", "--id", str(ids[4]))
    assert statuses(ids) == ["pending", "pending", "failed", "failed", "pending"]


def test_filters_by_creation_time():
    old, new = failed(2)
    Event.objects.filter(pk=old).update(created_at=timezone.now() - datetime.timedelta(hours=3))
    run("outbox_replay", "--since", "2h")
    assert statuses([old, new]) == ["failed", "pending"]
    run("outbox_replay", "--since", (timezone.now() - datetime.timedelta(days=1)).date().isoformat())
    assert statuses([old, new]) == ["pending", "pending"]


def test_done_events_need_include_done():
    ok = done(2)
    result = run("outbox_replay", "--status", "done")
    assert result.code == 1
    assert "add --include-done" in result.err
    assert statuses(ok) == ["done", "done"]
    assert run("outbox_replay", "--status", "done", "--include-done").out == "replay: 2 changed (2 done)\n"
    drain_all()
    assert len(calls("flaky")) == 4


def test_running_events_are_refused_and_counted():
    waiting, running = ping(2)
    Event.objects.filter(pk=running).update(status="running", lease_token="held")
    result = run("outbox_replay", "--status", "pending", "--status", "running")
    assert result.out == "replay: 1 changed (1 pending); refused 1 running\n"
    assert statuses([waiting, running]) == ["pending", "running"]
    assert Event.objects.get(pk=running).lease_token == "held"


def test_discard_marks_failed_events_discarded_so_they_never_run():
    broken = failed(2)
    waiting = ping(1)
    assert run("outbox_discard", "--dry-run").out == "discard: 2 would change (2 failed)\n"
    assert statuses(broken) == ["failed", "failed"]
    assert run("outbox_discard").out == "discard: 2 changed (2 failed)\n"
    assert statuses(broken + waiting) == ["discarded", "discarded", "pending"]
    assert run("outbox_status", "--max-failed", "0").code == 0


def test_discard_refuses_done_and_running_events():
    ok = done(1)
    [running] = ping(1)
    Event.objects.filter(pk=running).update(status="running", lease_token="held")
    result = run("outbox_discard", "--status", "done", "--status", "running")
    assert result.out == "discard: 0 changed; refused 1 done, 1 running\n"
    assert statuses([*ok, running]) == ["done", "running"]
