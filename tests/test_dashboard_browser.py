"""The dashboard as an operator sees it: Debian's Chromium, driven by Playwright, against the
live test server, from the changelist's link. ``artifacts/dashboard.png`` is the docs'
screenshot (``docs/dashboard.png``) when taken with the hour of traffic below."""

from __future__ import annotations

import datetime
import math
import random

import pytest
from django.core.cache import cache
from django.utils import timezone

from outbox.models import Event
from tests import test_admin_browser as admin_browser
from tests.test_admin import staff

pytestmark = [*admin_browser.pytestmark]
# The admin browser tests' fixtures: Chromium, a logged-in page, a real worker's history.
browser, login, history = admin_browser.browser, admin_browser.login, admin_browser.history
ARTIFACTS = admin_browser.ARTIFACTS

S = Event.Status
RECEIVERS = {  # receiver: (typical run in seconds, failures in a thousand)
    "shop.receivers.send_receipt": (0.04, 2),
    "shop.receivers.update_search_index": (0.3, 0),
    "shop.receivers.charge_card": (1.2, 60),
    "shop.receivers.notify_warehouse": (0.01, 15),
}


@pytest.fixture
def traffic():
    """An hour of a small shop's events: a steady flow, a spike of slow payments half an
    hour ago that backed up the queue, and a few events waiting now."""
    rng = random.Random(15)
    now = timezone.now()
    rows = []
    for minute in range(60, 0, -1):
        spike = 1 + 2 * math.exp(-(((minute - 30) / 4) ** 2))
        for _ in range(int(30 + 10 * math.sin(minute / 7) + 25 * (spike - 1))):
            receiver = rng.choice(list(RECEIVERS))
            typical, failures = RECEIVERS[receiver]
            created = now - datetime.timedelta(minutes=minute, seconds=rng.uniform(0, 60))
            wait = rng.lognormvariate(math.log(0.05 * spike**3), 0.8)
            took = rng.lognormvariate(math.log(typical), 0.5)
            failed = rng.random() < failures / 1000
            rows.append(_row(receiver, created, wait, took, S.FAILED if failed else S.DONE, "default"))
    for i in range(12):
        created = now - datetime.timedelta(seconds=10 * i)
        rows.append(_row("shop.receivers.send_receipt", created, None, None, S.PENDING, "default"))
    Event.objects.bulk_create(rows)


def _row(receiver, created, wait, took, status, queue):
    started = created + datetime.timedelta(seconds=wait) if wait is not None else None
    finished = started + datetime.timedelta(seconds=took) if took is not None else None
    return Event(
        signal="shop.signals.order_paid",
        receiver=receiver,
        payload={},
        status=status,
        attempts=1,
        max_attempts=5,
        available_at=created,
        created_at=created,
        started_at=started,
        finished_at=finished,
        queue=queue,
        last_error="RuntimeError: card declined" if status == S.FAILED else "",
    )


def _open_dashboard(login, errors):
    page = login(staff("viewer", "view_event"))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.click("#outbox-dashboard-link")
    page.wait_for_url("**/admin/outbox/event/dashboard/")
    return page


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


def test_the_dashboard_draws_an_hour_of_traffic(login, traffic):
    from playwright.sync_api import expect

    errors = []
    page = _open_dashboard(login, errors)
    expect(page.locator("svg.outbox-chart")).to_have_count(3)
    assert page.locator("#outbox-throughput svg rect.done").count() >= 58  # this minute may have none yet
    assert page.locator("#outbox-latency svg polyline.p95").count() >= 1
    expect(page.locator("#outbox-backlog svg circle.backlog")).to_have_count(60)
    expect(page.locator("#outbox-receivers")).to_contain_text("shop.receivers.charge_card")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    page.get_by_role("link", name="Last day").click()
    expect(page.locator("#outbox-throughput svg rect.done")).to_have_count(2)  # this hour, the last
    assert errors == []


def test_the_dashboard_of_an_empty_outbox(login):
    from playwright.sync_api import expect

    errors = []
    page = _open_dashboard(login, errors)
    expect(page.locator("svg.outbox-chart")).to_have_count(3)
    expect(page.locator("#outbox-receivers")).to_contain_text("No event finished in this window.")
    page.get_by_role("link", name="default", exact=True).click()
    expect(page.locator("svg.outbox-chart")).to_have_count(3)
    assert errors == []


def test_the_dashboard_after_a_real_worker_run(login, history):
    from playwright.sync_api import expect

    errors = []
    page = _open_dashboard(login, errors)
    expect(page.locator("#outbox-receivers")).to_contain_text("tests.testapp.receivers.flaky")
    expect(page.locator("#outbox-throughput svg rect.failed")).to_have_count(1)
    assert errors == []
