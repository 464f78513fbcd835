"""The admin as an operator uses it: Debian's Chromium, driven by Playwright, against the
live test server. Run alone with ``pytest -m browser``; screenshots go to ``artifacts/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.db import transaction

from outbox import operations
from outbox.models import Event
from outbox.worker import Worker
from tests.conftest import ROOT, wait_for
from tests.test_admin import make_events, staff
from tests.testapp import receivers
from tests.testapp.models import Person
from tests.testapp.signals import followed, pinged, work

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="needs Debian's chromium (make test installs it; CI fails without it)",
    ),
]

S = Event.Status


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the tests still call the
    # ORM synchronously between its calls, which Django refuses unless told it is safe.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
            )
            yield browser
            browser.close()


@pytest.fixture
def login(browser, live_server):
    contexts = []

    def open_as(user):
        context = browser.new_context(viewport={"width": 1600, "height": 900})
        # The app list sidebar folded away: the screenshots show the events, not the menu.
        context.add_init_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{live_server.url}/admin/login/?next=/admin/outbox/event/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", "pw")
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/outbox/event/")
        return page

    yield open_as
    for context in contexts:
        context.close()


def drain_until(predicate):
    """Run the in-process worker until ``predicate()``: retries wait out their backoff."""
    wait_for(lambda: Worker(once=True, listen=False).run() >= 0 and predicate(), timeout=30)


@pytest.fixture
def history():
    """Events as a small site leaves them: some done, two failed for good, one due, one
    discarded; all sent through real signals and run by the real worker."""
    ada, bob = Person.objects.create(name="ada"), Person.objects.create(name="bob")
    receivers.FAILURES["remaining"] = 1000
    with transaction.atomic():
        pinged.send(sender=Person, person=ada, template="welcome")
        pinged.send(sender=Person, person=bob, template="welcome")
    drain_until(lambda: Event.objects.filter(status=S.FAILED).count() == 2)
    receivers.FAILURES["remaining"] = 0
    for key in ("invoice-1", "invoice-2", "invoice-3"):
        work.send(sender=None, key=key)
    followed.send(sender=ada, followed=bob)
    drain_until(lambda: not Event.objects.exclude(status__in=[S.FAILED, S.DONE]).exists())
    work.send(sender=None, key="invoice-4")
    work.send(sender=None, key="cancelled")
    operations.discard(Event.objects.filter(payload__kwargs__key="cancelled"))
    return Event.objects.filter(status=S.FAILED).order_by("pk").first()


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_an_operator_finds_a_failed_event_reads_its_traceback_replays_it_and_sees_it_done(login, history):
    from playwright.sync_api import expect

    page = login(staff("operator", "view_event", "replay_event", "discard_event"))
    expect(page.locator("#outbox-summary")).to_contain_text("oldest due event waiting")
    shot(page, "admin-changelist.png")

    page.locator("#changelist-filter").get_by_role("link", name="failed", exact=True).click()
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("RuntimeError: the mail server is down")

    page.locator("#result_list").get_by_role("link", name=str(history.pk), exact=True).click()
    traceback = page.locator("pre.outbox-pre").first
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text('raise RuntimeError("the mail server is down")')
    ada = history.payload["kwargs"]["person"]["pk"]
    expect(page.get_by_role("link", name=f"testapp.Person #{ada}")).to_be_visible()
    shot(page, "admin-detail.png")

    page.click("#outbox-replay")
    expect(page.locator(".messagelist")).to_contain_text("1 event replayed: due now.")
    expect(page.locator(".field-status_badge .outbox-pending")).to_be_visible()

    drain_until(lambda: Event.objects.get(pk=history.pk).status == S.DONE)
    page.reload()
    expect(page.locator(".field-status_badge .outbox-done")).to_be_visible()
    assert [c for c in receivers.CALLS if c[0] == "flaky"][0][2]["person"].name == "ada"


def test_an_operator_replays_every_failed_event_across_pages_at_once(login, history, live_server):
    from playwright.sync_api import expect

    make_events(70)
    failed = set(Event.objects.filter(status=S.FAILED).values_list("pk", flat=True))
    assert len(failed) == 72
    page = login(staff("operator", "view_event", "replay_event", "discard_event"))
    page.goto(f"{live_server.url}/admin/outbox/event/?status__exact=failed")
    page.click("#action-toggle")
    page.locator(".actions .question a").click()
    expect(page.locator(".actions .all")).to_contain_text("All 72 selected")
    page.select_option("select[name=action]", "replay")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("72 events replayed: due now.")
    assert set(Event.objects.filter(status=S.PENDING).values_list("pk", flat=True)) >= failed
    assert not Event.objects.filter(status=S.FAILED).exists()
    assert Event.objects.filter(status=S.DONE).count() == 4


def test_a_viewer_sees_the_failure_but_no_way_to_replay_it(login, history):
    from playwright.sync_api import expect

    page = login(staff("viewer", "view_event"))
    expect(page.locator("#result_list")).to_contain_text("the mail server is down")
    expect(page.locator("select[name=action]")).to_have_count(0)
    expect(page.locator("#action-toggle")).to_have_count(0)
    page.locator("#result_list").get_by_role("link", name=str(history.pk), exact=True).click()
    expect(page.locator("pre.outbox-pre").first).to_contain_text("RuntimeError")
    expect(page.locator("#outbox-replay")).to_have_count(0)
    expect(page.locator("#outbox-discard")).to_have_count(0)
