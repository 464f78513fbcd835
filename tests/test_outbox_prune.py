"""``manage.py outbox_prune`` and the worker's automatic pruning: old finished events go,
in short batches, and nothing unfinished is ever deleted."""

from __future__ import annotations

import datetime
import io
import time
from collections import Counter

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from outbox import operations, pruning, queries
from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import postgres_only, wait_for
from tests.operating import done, failed, finished_ago, ping, run
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = pytest.mark.django_db(transaction=True)

OUTBOX = {"BACKOFF_BASE_SECONDS": 0.01, "BACKOFF_MAX_SECONDS": 0.05, "POLL_INTERVAL": 0.1}


def statuses() -> dict[int, str]:
    return dict(Event.objects.values_list("pk", "status"))


def test_deletes_done_events_older_than_the_cutoff_and_nothing_else():
    old_done, recent_done = done(3), done(2)
    old_failed = failed(1)
    finished_ago(old_done + old_failed, days=8)
    finished_ago(recent_done, days=6)
    pending = ping(2)
    result = run("outbox_prune", "--older-than", "7d")
    assert result.out == "deleted 3 events finished over 7d ago (3 done) in 1 batch(es)\n"
    assert statuses() == {
        **dict.fromkeys(recent_done, "done"),
        **dict.fromkeys(old_failed, "failed"),
        **dict.fromkeys(pending, "pending"),
    }


def test_chosen_statuses_are_pruned_instead_of_done():
    kept = done(1)
    gone_failed = failed(2)
    [gone_discarded] = ping(1)
    operations.discard(Event.objects.filter(pk=gone_discarded))
    finished_ago([*kept, *gone_failed, gone_discarded], hours=2)
    result = run("outbox_prune", "--older-than", "1h", "--status", "failed", "--status", "discarded")
    assert "deleted 3 events" in result.out
    assert "(2 failed, 1 discarded)" in result.out
    assert statuses() == dict.fromkeys(kept, "done")


def test_deletes_in_batches_of_at_most_batch_size_each_in_its_own_transaction():
    ids = done(25)
    finished_ago(ids, days=2)
    deletes = []

    def watch(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith("DELETE"):
            deletes.append((context["cursor"].rowcount, connection.in_atomic_block))
        return result

    with connection.execute_wrapper(watch):
        result = run("outbox_prune", "--older-than", "1d", "--batch-size", "10")
    assert "deleted 25 events" in result.out
    assert "in 3 batch(es)" in result.out
    # Autocommit, not inside atomic(): each DELETE commits on its own.
    assert deletes == [(10, False), (10, False), (5, False)]
    assert Event.objects.count() == 0


def test_pending_and_running_events_are_never_deleted_whatever_their_dates():
    waiting, running = ping(2)
    long_ago = timezone.now() - datetime.timedelta(days=365)
    # Inconsistent rows, as a hand edit might leave them: a finish time on unfinished work.
    Event.objects.filter(pk=waiting).update(finished_at=long_ago, created_at=long_ago)
    Event.objects.filter(pk=running).update(status="running", finished_at=long_ago, lease_token="t")
    run("outbox_prune", "--older-than", "1s", "--status", "done", "--status", "failed")
    assert statuses() == {waiting: "pending", running: "running"}
    with pytest.raises(ValueError, match="only done, failed, discarded"):
        queries.delete_finished("default", [waiting], "pending", timezone.now())
    assert run("outbox_prune", "--older-than", "1s", "--status", "pending").code == 1


def test_an_event_replayed_after_its_page_was_read_is_kept():
    [event] = done(1)
    finished_ago([event], days=2)
    operations.replay(Event.objects.filter(pk=event), include_done=True)
    cutoff = timezone.now() - datetime.timedelta(days=1)
    assert queries.delete_finished("default", [event], "done", cutoff) == 0
    assert statuses() == {event: "pending"}


def test_dry_run_counts_and_deletes_nothing():
    ids = done(4)
    finished_ago(ids[:3], days=10)
    result = run("outbox_prune", "--older-than", "7d", "--dry-run")
    assert result.out == "would delete 3 events finished over 7d ago (3 done)\n"
    assert Event.objects.count() == 4


def test_older_than_is_required_and_batch_size_is_bounded():
    assert "--older-than" in run("outbox_prune").err
    result = run("outbox_prune", "--older-than", "1d", "--batch-size", "0")
    assert "must be a whole number from 1 to 100000" in result.err


def test_durations_add_up_their_parts():
    ids = done(2)
    finished_ago(ids[:1], minutes=95)
    finished_ago(ids[1:], minutes=85)
    assert "deleted 1 events finished over 90m ago" in run("outbox_prune", "--older-than", "1h30m").out


def test_a_prune_past_its_deadline_stops_between_batches_and_says_so():
    ids = done(3)
    finished_ago(ids, days=1)
    result = pruning.prune("default", datetime.timedelta(hours=1), batch_size=1, deadline=time.monotonic())
    assert (result.complete, result.total) == (False, 0)
    result = pruning.prune("default", datetime.timedelta(hours=1), batch_size=1)
    assert (result.complete, result.total, result.batches) == (True, 3, 3)


def test_pruning_beside_a_busy_worker_process_loses_no_event(worker_process):
    worker_process()
    keys = [f"k{i}" for i in range(200)]
    pruned = 0
    for start in range(0, len(keys), 20):
        with transaction.atomic():
            for key in keys[start : start + 20]:
                work.send(sender="ops", key=key)
        if start == 0:
            # Done, not only run: a receiver's Call row commits before its batch is marked
            # done (with the worker's next claim), and only done events are pruned.
            wait_for(lambda: Event.objects.filter(status="done").count() >= 20, timeout=60)
        # Prune everything done so far while the worker claims and completes the rest.
        result = pruning.prune("default", datetime.timedelta(0), batch_size=7)
        pruned += result.total
    assert pruned >= 20
    wait_for(lambda: Call.objects.count() >= len(keys), timeout=60)
    # The receiver's Call row commits before the worker marks its batch done: wait for that.
    wait_for(lambda: not Event.objects.exclude(status="done").exists(), timeout=60)
    call_command("outbox_prune", "--older-than", "0s", stdout=io.StringIO())
    assert Counter(Call.objects.values_list("key", flat=True)) == Counter(keys)
    assert list(Event.objects.values_list("status", flat=True)) == []


# --- automatic pruning by the worker ------------------------------------------------------


def test_the_worker_does_not_prune_by_default():
    ids = done(2)
    finished_ago(ids, days=365)
    Worker(once=True, listen=False).run()
    assert Event.objects.count() == 2


def test_the_worker_prunes_done_events_older_than_prune_after():
    old, recent = done(3), done(1)
    old_failed = failed(1)
    finished_ago(old + old_failed, hours=2)
    with override_settings(OUTBOX={**OUTBOX, "PRUNE_AFTER": datetime.timedelta(hours=1)}):
        ping(1)
        assert Worker(once=True, listen=False).run() == 1
    # Failed events wait for an operator: only done ones are pruned automatically.
    assert sorted(Event.objects.values_list("status", flat=True)) == ["done", "done", "failed"]
    assert set(recent) <= set(Event.objects.values_list("pk", flat=True))


def test_the_worker_prunes_at_most_once_per_prune_interval():
    first = done(1)
    finished_ago(first, seconds=120)
    with override_settings(OUTBOX={**OUTBOX, "PRUNE_AFTER": 60, "PRUNE_INTERVAL": 300}):
        worker = Worker(once=True, listen=False)
        worker.run()
        assert Event.objects.count() == 0
        second = done(1)
        finished_ago(second, seconds=120)
        worker.run()
        assert list(Event.objects.values_list("pk", flat=True)) == second


@postgres_only
def test_the_migration_sets_aggressive_autovacuum_on_the_table():
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = 'outbox_event'::regclass")
        [options] = cursor.fetchone()
    assert set(options) >= {
        "autovacuum_vacuum_scale_factor=0.01",
        "autovacuum_vacuum_threshold=1000",
        "autovacuum_analyze_scale_factor=0.02",
        "autovacuum_vacuum_cost_delay=1",
    }


def test_prune_command_prints_nothing_to_stderr(capsys):
    call_command("outbox_prune", "--older-than", "1d")
    assert capsys.readouterr().err == ""
