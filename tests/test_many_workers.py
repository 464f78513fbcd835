"""Several run_outbox workers on one PostgreSQL (or MariaDB/MySQL), each its own process and connections, as
on separate machines: they share the work and no row runs twice."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import connection, transaction

from outbox.models import Event
from tests.conftest import listening_sessions, skip_locked_only, wait_for
from tests.testapp.models import Call
from tests.testapp.signals import work

pytestmark = [pytest.mark.django_db(transaction=True), skip_locked_only]


def test_four_workers_on_one_database_share_the_work_and_run_no_row_twice(worker_process):
    workers = [worker_process("--batch-size", "10", "--poll-interval", "0.5") for _ in range(4)]
    if connection.vendor == "postgresql":  # all four idle on LISTEN (MySQL: they poll)
        wait_for(lambda: listening_sessions() == 4, timeout=60, interval=0.1)
    keys = [f"k{i}" for i in range(1000)]
    with transaction.atomic():
        for key in keys:
            work.send(sender=None, key=key, sleep=0.004)
    wait_for(lambda: Event.objects.filter(status="done").count() == len(keys), timeout=120, interval=0.2)

    assert Counter(Call.objects.values_list("key", flat=True)) == Counter(keys)
    assert set(Event.objects.values_list("attempts", flat=True)) == {1}
    by_worker = Counter(Call.objects.values_list("worker_pid", flat=True))
    assert set(by_worker) == {one.process.pid for one in workers}, by_worker
    assert len(set(Event.objects.values_list("worker", flat=True))) == 4
