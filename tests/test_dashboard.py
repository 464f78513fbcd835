"""The admin dashboard: its figures from known rows (buckets, percentiles, backlog,
receivers counted by hand), who may open it, and that its queries go through indexes.
On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import re

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from outbox import queries as outbox_queries
from outbox.dashboard import charts
from outbox.dashboard.queries import BOUNDS, WINDOWS, figures, quantile
from outbox.models import Event
from tests.conftest import wait_for
from tests.test_admin import staff

pytestmark = pytest.mark.django_db

S = Event.Status
DASHBOARD = reverse("admin:outbox_event_dashboard")
MIN = datetime.timedelta(minutes=1)
SEC = datetime.timedelta(seconds=1)


def _minute_start(now):
    return now.replace(second=0, microsecond=0)


#: The start of the current minute bucket in the tests below ("L"); "now" is 30 s into it.
L = _minute_start(timezone.now()) - datetime.timedelta(hours=3)
NOW = L + 30 * SEC


def event(status, finished=None, latency=None, took=None, created=None, receiver="app.fast", queue="default"):
    """A row as the worker leaves it: ``finished`` at that time, having started ``took``
    seconds before, ``latency`` seconds after it was sent."""
    if finished is not None:
        started = finished - datetime.timedelta(seconds=took)
        created = started - datetime.timedelta(seconds=latency)
    else:
        started = None
    return Event(
        signal="app.signal",
        receiver=receiver,
        payload={},
        status=status,
        attempts=1,
        max_attempts=3,
        available_at=created,
        created_at=created,
        started_at=started if status in (S.DONE, S.FAILED) else None,
        finished_at=finished,
        queue=queue,
    )


@pytest.fixture
def history(monkeypatch):
    """Rows whose figures are worked out by hand in the tests (bucket 59 holds NOW)."""
    monkeypatch.setattr(outbox_queries, "database_now", lambda alias: NOW)
    since = L - 59 * MIN
    assert since == L - datetime.timedelta(minutes=59)
    rows = [
        # bucket 49: three quick successes, sent 0.3 s before they started
        *(event(S.DONE, L - 10 * MIN + 10 * SEC, 0.3, 0.002) for _ in range(3)),
        # bucket 58: one more, and two failures sent in bucket 57 (20 s wait, 3 s run)
        event(S.DONE, L - MIN + 30 * SEC, 0.3, 0.002),
        *(event(S.FAILED, L - MIN + 20 * SEC, 20, 3.0, receiver="app.flaky") for _ in range(2)),
        # bucket 59: a slow receiver sent in bucket 58; a success in another queue
        event(S.DONE, L + 10 * SEC, 0.3, 45, receiver="app.slow"),
        event(S.DONE, L + 5 * SEC, 0.3, 0.002, queue="mail"),
        # before the hour: in the day only
        event(S.DONE, L - 120 * MIN, 0.3, 0.002),
        # discarded: waiting from bucket 29 to bucket 39
        event(S.DISCARDED, created=L - 30 * MIN),
        # waiting now: two since bucket 54, one since before the window, one running
        *(event(S.PENDING, created=L - 5 * MIN) for _ in range(2)),
        event(S.PENDING, created=L - 180 * MIN),
        event(S.RUNNING, created=L - MIN + 5 * SEC),
    ]
    assert rows[9].status == S.DISCARDED
    rows[9].finished_at = L - 20 * MIN
    Event.objects.bulk_create(rows)


def test_throughput_is_counted_per_minute_of_finishing(history):
    hour = figures(WINDOWS["hour"])
    assert hour.starts[-1] == L and hour.starts[0] == L - 59 * MIN
    assert {i: n for i, n in enumerate(hour.done) if n} == {49: 3, 58: 1, 59: 2}
    assert {i: n for i, n in enumerate(hour.failed) if n} == {58: 2}


def test_the_day_counts_by_hour_and_reaches_further_back(history):
    day = figures(WINDOWS["day"])
    assert len(day.starts) == 24 and day.starts[-1] == L.replace(minute=0)
    assert day.total_done == 7 and day.total_failed == 2
    assert sum(figures(WINDOWS["hour"]).done) == 6  # the success two hours ago is out of the hour


def test_commit_to_start_latency_percentiles_per_bucket_and_overall(history):
    hour = figures(WINDOWS["hour"])
    # bucket 49: three at 0.3 s, in the (0.25, 0.5] bucket: ranks 1.5 and 2.85 of 3
    assert hour.p50[49] == pytest.approx(0.25 + 0.25 * 1.5 / 3)
    assert hour.p95[49] == pytest.approx(0.25 + 0.25 * 2.85 / 3)
    # bucket 58: one at 0.3 s, two at 20 s (the (10, 30] bucket): ranks 1.5 and 2.85
    assert hour.p50[58] == pytest.approx(10 + 20 * 0.5 / 2)
    assert hour.p95[58] == pytest.approx(10 + 20 * 1.85 / 2)
    assert hour.p50[0] is None and hour.p95[50] is None
    # the hour: six at 0.3 s, two at 20 s: ranks 4 and 7.6 of 8
    assert hour.p50_all == pytest.approx(0.25 + 0.25 * 4 / 6)
    assert hour.p95_all == pytest.approx(10 + 20 * 1.6 / 2)


def test_backlog_at_the_end_of_each_minute(history):
    backlog = figures(WINDOWS["hour"]).backlog
    expected = [1] * 29 + [2] * 10 + [1] * 15 + [3] * 3 + [5, 5, 4]
    assert backlog == expected


def test_slowest_and_most_failing_receivers(history):
    hour = figures(WINDOWS["hour"])
    assert [r.name for r in hour.slowest] == ["app.slow", "app.flaky", "app.fast"]
    slow, flaky, fast = hour.slowest
    assert slow.p95 == pytest.approx(30 + 30 * 0.95)  # 45 s, in the (30, 60] bucket
    assert flaky.p95 == pytest.approx(2.5 + 2.5 * 1.9 / 2)
    assert (fast.done, fast.failed, fast.p95) == (5, 0, pytest.approx(0.005 * 4.75 / 5))
    assert [(r.name, r.failed, r.failure_rate) for r in hour.failing] == [("app.flaky", 2, 1.0)]


def test_one_queue_leaves_the_others_out(history):
    default = figures(WINDOWS["hour"], "default")
    assert default.done[59] == 1 and default.total_done == 5
    mail = figures(WINDOWS["hour"], "mail")
    assert mail.total_done == 1 and mail.total_failed == 0 and mail.backlog == [0] * 60


def test_an_empty_table_gives_empty_figures():
    hour = figures(WINDOWS["hour"])
    assert hour.total_done == hour.total_failed == 0
    assert hour.p50_all is None and hour.backlog == [0] * 60 and hour.receivers == []


def test_quantiles_interpolate_within_a_bucket_and_stop_at_the_largest_bound():
    counts = [0] * (len(BOUNDS) + 1)
    assert quantile(counts, 0.5) is None
    counts[0] = 4  # four values under 5 ms
    assert quantile(counts, 0.5) == pytest.approx(0.0025)
    counts[-1] = 100  # a hundred beyond the last bound
    assert quantile(counts, 0.95) == BOUNDS[-1]


def test_rows_finished_by_older_code_count_without_a_latency(history):
    Event.objects.filter(status=S.DONE).update(started_at=None)
    hour = figures(WINDOWS["hour"])
    assert hour.total_done == 6
    assert hour.p50[49] is None and hour.p50[58] == pytest.approx(10 + 20 * 1 / 2)  # two at 20 s: rank 1


# --- the page ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


def test_anonymous_is_sent_to_the_login_page(client):
    response = client.get(DASHBOARD)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_without_the_view_permission_is_refused(client):
    client.force_login(staff("someone"))
    assert client.get(DASHBOARD).status_code == 403


def test_staff_with_the_view_permission_sees_the_charts(client, history):
    client.force_login(staff("viewer", "view_event"))
    page = client.get(DASHBOARD).content.decode()
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" viewBox') == 3
    assert "app.slow" in page and "app.flaky" in page
    assert "no CDN" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    day = client.get(DASHBOARD, {"window": "day", "queue": "mail"})
    assert day.status_code == 200 and day.context["figures"].total_done == 1


def test_the_changelist_links_to_the_dashboard(client):
    client.force_login(staff("viewer", "view_event"))
    page = client.get(reverse("admin:outbox_event_changelist")).content.decode()
    assert f'href="{DASHBOARD}"' in page


def test_an_unknown_window_or_queue_is_not_an_error(client):
    client.force_login(staff("viewer", "view_event"))
    response = client.get(DASHBOARD, {"window": "year", "queue": "nope"})
    assert response.status_code == 200 and response.context["figures"].window.name == "hour"


def test_figures_are_cached_for_a_few_seconds(client, settings):
    client.force_login(staff("viewer", "view_event"))
    client.get(DASHBOARD)
    with CaptureQueriesContext(connection) as seen:
        client.get(DASHBOARD)
    assert not [q for q in seen.captured_queries if "outbox_event" in q["sql"]]
    settings.OUTBOX = {"DASHBOARD_CACHE_SECONDS": 1}
    cache.clear()
    with CaptureQueriesContext(connection) as seen:
        client.get(DASHBOARD)
    assert len([q for q in seen.captured_queries if "outbox_event" in q["sql"]]) == 3


# --- through the indexes -----------------------------------------------------------------


def _dashboard_queries():
    with CaptureQueriesContext(connection) as seen:
        figures(WINDOWS["day"])
        figures(WINDOWS["hour"], "default")
    found = [q["sql"] for q in seen.captured_queries if "outbox_event" in q["sql"]]
    assert len(found) == 6
    return found


def test_every_dashboard_query_reads_through_an_index(history):
    with connection.cursor() as cursor:
        for sql in _dashboard_queries():
            if connection.vendor == "postgresql":
                # As on a big table: the planner would rather scan these few rows.
                cursor.execute("SET LOCAL enable_seqscan = off")
                cursor.execute("EXPLAIN " + sql)
                plan = "\n".join(row[0] for row in cursor.fetchall())
                assert "Seq Scan on outbox_event" not in plan, plan
                assert re.search(r"outbox_event_(finished|due|queue_due)", plan), plan
            elif connection.vendor == "sqlite":
                cursor.execute("EXPLAIN QUERY PLAN " + sql)
                plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
                assert "SCAN outbox_event\n" not in plan + "\n", plan
                assert re.search(r"INDEX outbox_event_(finished|due|queue_due)", plan), plan


def test_charts_are_svg_and_escape_their_text():
    svg = charts.bars([charts.Series("<done>", [1, 0, 3], "done")], ["a", "b", "<c>"], unit="/min")
    assert svg.startswith("<svg") and "<done>" not in svg and "&lt;done&gt;" in svg
    assert "<script" not in svg
    empty = charts.lines([charts.Series("p95", [None, None], "p95")], ["a", "b"], unit="s")
    assert empty.startswith("<svg")


# --- what the worker writes for it -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("concurrency", [1, 2])
def test_the_worker_writes_when_each_receiver_started_and_returned(drain, concurrency):
    from tests.testapp.signals import charged, work

    work.send(sender=None, key="slow", sleep=0.3)
    work.send(sender=None, key="quick")
    charged.send(sender=None, key="refused")  # fails twice: failed for good
    refused = Event.objects.get(payload__kwargs__key="refused")
    wait_for(
        lambda: drain(concurrency=concurrency) >= 0 and Event.objects.get(pk=refused.pk).status == "failed"
    )
    slow, quick = (Event.objects.get(payload__kwargs__key=key) for key in ("slow", "quick"))
    for row in (slow, quick):
        assert row.status == S.DONE and row.created_at <= row.started_at <= row.finished_at
    # Per row, not the time the batch was written: the slow one's run is its own.
    slow_run, quick_run = (row.finished_at - row.started_at for row in (slow, quick))
    assert 0.3 <= slow_run.total_seconds() < 5 and quick_run < slow_run
    if concurrency == 1:  # one after the other
        assert quick.started_at >= slow.finished_at - datetime.timedelta(milliseconds=5)
    refused.refresh_from_db()
    assert refused.created_at <= refused.started_at <= refused.finished_at
    hour = figures(WINDOWS["hour"])
    assert (hour.total_done, hour.total_failed) == (2, 1) and hour.p95_all is not None
    assert [(r.name, r.failed) for r in hour.failing] == [("tests.testapp.receivers.charge", 1)]
    assert [r.name for r in hour.slowest][0] == "tests.testapp.receivers.record"


def test_with_use_tz_false_the_figures_count_as_well(settings, client):
    settings.USE_TZ = False
    now = timezone.now()
    assert timezone.is_naive(now)
    Event.objects.bulk_create(
        [
            event(S.DONE, now - 2 * MIN, 0.3, 0.002),
            event(S.PENDING, created=now - 3 * MIN),
        ]
    )
    hour = figures(WINDOWS["hour"])
    assert hour.total_done == 1 and hour.backlog[-1] == 1 and hour.p50_all == pytest.approx(0.25 + 0.25 * 0.5)
    client.force_login(staff("viewer", "view_event"))
    assert client.get(DASHBOARD).status_code == 200
