"""The operator's admin: who may see and do what, what replay and discard change, and what a
page costs. Driven through Django's test client, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import re
import sys

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from outbox import admin_log, monitoring
from outbox.models import Event
from outbox.serialization import encode_payload
from tests.conftest import postgres_only
from tests.testapp.models import Keyed, Person, Sample
from tests.testapp.signals import pinged

pytestmark = pytest.mark.django_db

S = Event.Status
CHANGELIST = reverse("admin:outbox_event_changelist")
TRACEBACK = (
    'Traceback (most recent call last):\n  File "receivers.py", line 37, in flaky\n'
    "RuntimeError: the mail server is down\n"
)


def change_url(event):
    return reverse("admin:outbox_event_change", args=[event.pk])


def make_events(n, status=S.FAILED, receiver="tests.testapp.receivers.flaky", payload=None, **fields):
    """Rows as the worker leaves them after the receiver failed (or ran, or is running)."""
    now = timezone.now()
    finished = status in (S.DONE, S.FAILED, S.DISCARDED)
    rows = [
        Event(
            signal="tests.testapp.signals.pinged",
            receiver=receiver,
            payload=payload or {"sender": None, "kwargs": {"n": i}},
            status=status,
            attempts=3 if status == S.FAILED else 1,
            max_attempts=3,
            available_at=now + datetime.timedelta(seconds=60 if status == S.RUNNING else 0),
            lease_token="t" * 32 if status == S.RUNNING else None,
            created_at=now,
            finished_at=now if finished else None,
            last_error="RuntimeError: the mail server is down" if status == S.FAILED else "",
            last_traceback=TRACEBACK if status == S.FAILED else "",
            **fields,
        )
        for i in range(n)
    ]
    return Event.objects.bulk_create(rows)


def staff(username, *perms):
    user = get_user_model().objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="outbox", codename__in=perms))
    return user


@pytest.fixture
def operator(client):
    client.force_login(staff("operator", "view_event", "replay_event", "discard_event"))
    return client


@pytest.fixture
def viewer(client):
    client.force_login(staff("viewer", "view_event"))
    return client


def action(client, name, events=(), across=False, query="", **extra):
    data = {"action": name, "index": "0", "_selected_action": [e.pk for e in events], **extra}
    if across:
        data["select_across"] = "1"
    return client.post(CHANGELIST + query, data, follow=True)


def statuses():
    return dict(Event.objects.values_list("pk", "status"))


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


# --- permissions -------------------------------------------------------------------------


def test_staff_without_the_view_permission_sees_nothing(client):
    [event] = make_events(1)
    client.force_login(staff("nobody"))
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(change_url(event)).status_code == 403


def test_a_viewer_sees_events_but_no_action_and_no_button(viewer):
    [event] = make_events(1)
    page = viewer.get(CHANGELIST)
    assert page.status_code == 200
    assert f">{event.pk}</a>" in page.content.decode()
    assert 'name="action"' not in page.content.decode()
    detail = viewer.get(change_url(event)).content.decode()
    assert "the mail server is down" in detail
    assert "outbox-replay" not in detail and "outbox-discard" not in detail


def test_forged_action_posts_from_a_viewer_change_nothing(viewer):
    events = make_events(3)
    before = statuses()
    for name in ("replay", "discard", "delete_selected"):
        assert action(viewer, name, events).status_code == 403
    assert statuses() == before


def test_forged_button_posts_from_a_viewer_are_forbidden(viewer):
    [event] = make_events(1)
    for name in ("replay", "discard"):
        url = reverse(f"admin:outbox_event_{name}", args=[event.pk])
        assert viewer.post(url).status_code == 403
    assert Event.objects.get().status == S.FAILED


def test_replay_permission_does_not_grant_discard(client):
    client.force_login(staff("replayer", "view_event", "replay_event"))
    [event] = make_events(1)
    page = client.get(CHANGELIST).content.decode()
    assert 'value="replay"' in page and 'value="discard"' not in page
    assert action(client, "discard", [event]).status_code == 403
    assert client.post(reverse("admin:outbox_event_discard", args=[event.pk])).status_code == 403
    assert Event.objects.get().status == S.FAILED


def test_nobody_adds_edits_or_deletes_an_event_through_the_admin(admin_client):
    [event] = make_events(1)
    assert admin_client.get(reverse("admin:outbox_event_add")).status_code == 403
    assert admin_client.get(reverse("admin:outbox_event_delete", args=[event.pk])).status_code == 403
    edit = {"receiver": "os.system", "payload": '{"sender": "rm -rf /"}', "status": "pending", "_save": "1"}
    assert admin_client.post(change_url(event), edit).status_code == 403
    event.refresh_from_db()
    assert (event.receiver, event.status) == ("tests.testapp.receivers.flaky", S.FAILED)
    page = admin_client.get(change_url(event)).content.decode()
    assert "<textarea" not in page and 'name="receiver"' not in page


def test_posts_without_a_csrf_token_are_refused(db):
    [event] = make_events(1)
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff("operator", "view_event", "replay_event", "discard_event"))
    assert client.post(reverse("admin:outbox_event_replay", args=[event.pk])).status_code == 403
    response = client.post(CHANGELIST, {"action": "replay", "index": "0", "_selected_action": [event.pk]})
    assert response.status_code == 403
    assert Event.objects.get().status == S.FAILED


# --- replay and discard ------------------------------------------------------------------


def test_replay_makes_selected_failed_events_due_now_and_keeps_their_error(operator):
    chosen, other = make_events(2)
    response = action(operator, "replay", [chosen])
    assert "1 event replayed: due now." in messages_of(response)
    chosen.refresh_from_db()
    assert chosen.status == S.PENDING and chosen.attempts == 0 and chosen.finished_at is None
    assert chosen.available_at <= timezone.now()
    assert chosen.last_error == "RuntimeError: the mail server is down"
    assert Event.objects.get(pk=other.pk).status == S.FAILED


def test_select_all_matching_replays_every_failed_event_across_pages_and_nothing_else(operator):
    failed = make_events(130)
    done = make_events(5, status=S.DONE)
    pending_elsewhere = make_events(3, receiver="tests.testapp.receivers.record", status=S.FAILED)
    query = "?status__exact=failed&receiver=tests.testapp.receivers.flaky"
    page = operator.get(CHANGELIST + query)
    assert "Select all 130" in page.content.decode()
    first_page = page.context["cl"].result_list
    assert len(first_page) == 50
    response = action(operator, "replay", first_page, across=True, query=query)
    assert "130 events replayed: due now." in messages_of(response)
    now = statuses()
    assert {now[e.pk] for e in failed} == {S.PENDING}
    assert {now[e.pk] for e in done} == {S.DONE}
    assert {now[e.pk] for e in pending_elsewhere} == {S.FAILED}


def test_select_all_matching_a_search_discards_only_what_the_search_found(operator):
    ada = Person.objects.create(name="ada-lovelace")
    hers = make_events(4, payload=encode_payload(ada, {"followed": ada}))
    others = make_events(60)
    response = action(operator, "discard", hers[:1], across=True, query="?q=lovelace")
    assert "4 events discarded." in messages_of(response)
    now = statuses()
    assert {now[e.pk] for e in hers} == {S.DISCARDED}
    assert {now[e.pk] for e in others} == {S.FAILED}


def test_replaying_running_events_is_refused_with_a_message(operator):
    running = make_events(2, status=S.RUNNING)
    failed = make_events(1)
    response = action(operator, "replay", [*running, *failed])
    msgs = messages_of(response)
    assert "1 event replayed: due now." in msgs
    assert any(m.startswith("2 running events left as they were: a worker holds it") for m in msgs)
    assert {statuses()[e.pk] for e in running} == {S.RUNNING}
    assert Event.objects.get(pk=running[0].pk).lease_token == "t" * 32


def test_replaying_done_events_asks_first_and_changes_nothing_until_confirmed(operator):
    done = make_events(2, status=S.DONE)
    [failed] = make_events(1)
    data = {"action": "replay", "index": "0", "_selected_action": [e.pk for e in [*done, failed]]}
    page = operator.post(CHANGELIST, data)
    assert page.status_code == 200
    assert "2 of these events are done" in page.content.decode()
    assert set(statuses().values()) == {S.DONE, S.FAILED}

    response = operator.post(CHANGELIST, {**data, "include_done": "no"}, follow=True)
    assert "1 event replayed: due now." in messages_of(response)
    assert any("2 done events left as they were" in m for m in messages_of(response))
    assert {statuses()[e.pk] for e in done} == {S.DONE}

    response = operator.post(CHANGELIST, {**data, "include_done": "yes"}, follow=True)
    assert "3 events replayed: due now." in messages_of(response)
    assert set(statuses().values()) == {S.PENDING}


def test_discard_refuses_running_and_done_events(operator):
    running, done, failed, pending = (
        make_events(1, status=s)[0] for s in (S.RUNNING, S.DONE, S.FAILED, S.PENDING)
    )
    response = action(operator, "discard", [running, done, failed, pending])
    msgs = messages_of(response)
    assert "2 events discarded." in msgs
    assert any(m.startswith("1 done event left as it was") for m in msgs)
    assert any(m.startswith("1 running event left as it was") for m in msgs)
    assert statuses() == {
        running.pk: S.RUNNING,
        done.pk: S.DONE,
        failed.pk: S.DISCARDED,
        pending.pk: S.DISCARDED,
    }


def test_the_detail_page_buttons_replay_and_discard_one_event(operator):
    first, second = make_events(2)
    response = operator.post(reverse("admin:outbox_event_replay", args=[first.pk]), follow=True)
    assert response.redirect_chain[-1][0] == change_url(first)
    assert "1 event replayed: due now." in messages_of(response)
    operator.post(reverse("admin:outbox_event_discard", args=[second.pk]))
    assert statuses() == {first.pk: S.PENDING, second.pk: S.DISCARDED}
    assert operator.get(reverse("admin:outbox_event_replay", args=[first.pk])).status_code == 405


def test_the_replay_button_on_a_done_event_asks_first(operator):
    [done] = make_events(1, status=S.DONE)
    url = reverse("admin:outbox_event_replay", args=[done.pk])
    assert "1 of these events is done" in operator.post(url).content.decode()
    assert Event.objects.get().status == S.DONE
    operator.post(url, {"include_done": "yes"})
    assert Event.objects.get().status == S.PENDING


def test_a_running_event_has_no_replay_button_and_a_forged_one_is_refused(operator):
    [running] = make_events(1, status=S.RUNNING)
    page = operator.get(change_url(running)).content.decode()
    assert "outbox-replay" not in page and "outbox-discard" not in page
    response = operator.post(reverse("admin:outbox_event_replay", args=[running.pk]), follow=True)
    assert any("running event left as it was" in m for m in messages_of(response))
    assert Event.objects.get().status == S.RUNNING


# --- what the pages show ------------------------------------------------------------------


def test_the_detail_page_shows_traceback_payload_and_linked_references(operator):
    ada = Person.objects.create(name="ada")
    [event] = make_events(1, payload=encode_payload(ada, {"followed": ada, "model": Person}))
    page = operator.get(change_url(event)).content.decode()
    assert re.search(
        r"<pre[^>]*>Traceback \(most recent call last\):.*RuntimeError: the mail server is down", page, re.S
    )
    assert '<pre class="outbox-pre">{\n  &quot;kwargs&quot;: {' in page
    person_url = reverse("admin:testapp_person_change", args=[ada.pk])
    assert f'<a href="{person_url}">testapp.Person #{ada.pk}</a>' in page
    assert f'<a href="{reverse("admin:testapp_person_changelist")}">testapp.Person</a>' in page
    assert 'id="outbox-replay"' in page and 'id="outbox-discard"' in page


def test_a_reference_to_a_model_without_an_admin_is_named_but_not_linked(operator):
    sample = Sample.objects.create(title="s")
    [event] = make_events(1, payload=encode_payload(sample, {}))
    page = operator.get(change_url(event)).content.decode()
    assert f"<code>payload.sender</code>: testapp.Sample #{sample.pk}</div>" in page


def test_buttons_for_a_malformed_or_unknown_id_find_nothing(operator):
    for bad in ("abc", "999999"):
        assert operator.post(reverse("admin:outbox_event_replay", args=[bad])).status_code == 404


def test_the_changelist_shows_the_columns_newest_first(operator):
    old, new = make_events(2)
    Event.objects.filter(pk=new.pk).update(last_error="ConnectionError: refused\nsecond line")
    page = operator.get(CHANGELIST)
    assert [e.pk for e in page.context["cl"].result_list] == [new.pk, old.pk]
    html = page.content.decode()
    assert 'class="outbox-status outbox-failed"' in html
    assert "3/3" in html
    assert ">ConnectionError: refused</span>" in html


def test_the_summary_counts_events_per_status_and_the_age_of_the_oldest_due_one(operator):
    make_events(3)
    make_events(2, status=S.DONE)
    [late] = make_events(1, status=S.PENDING)
    Event.objects.filter(pk=late.pk).update(available_at=timezone.now() - datetime.timedelta(minutes=5))
    summary = operator.get(CHANGELIST).context["outbox_summary"]()
    assert summary.counts == {"pending": 1, "running": 0, "done": 2, "failed": 3, "discarded": 0}
    assert datetime.timedelta(minutes=5) <= summary.oldest_due_age < datetime.timedelta(minutes=6)
    html = operator.get(CHANGELIST).content.decode()
    assert "oldest due event waiting 5" in html


@pytest.mark.parametrize(
    ("term", "found"),
    [("mail server", "failed"), ("receivers.record", "record"), ("pinged", "both"), ("lovelace", "record")],
)
def test_search_finds_events_by_error_receiver_signal_and_payload(operator, term, found):
    ada = Person.objects.create(name="lovelace")
    [failed] = make_events(1)
    [record] = make_events(
        1, status=S.DONE, receiver="tests.testapp.receivers.record", payload=encode_payload(ada, {})
    )
    expected = {"failed": {failed.pk}, "record": {record.pk}, "both": {failed.pk, record.pk}}[found]
    page = operator.get(CHANGELIST, {"q": term})
    assert {e.pk for e in page.context["cl"].result_list} == expected


def test_search_by_hash_id_finds_that_event_alone_and_a_bare_number_finds_it_too(operator):
    events = make_events(12)
    found = operator.get(CHANGELIST, {"q": f"#{events[3].pk}"}).context["cl"].result_list
    assert [e.pk for e in found] == [events[3].pk]
    found = operator.get(CHANGELIST, {"q": str(events[3].pk)}).context["cl"].result_list
    assert events[3].pk in {e.pk for e in found}


def test_signal_and_receiver_filters_offer_the_registered_names_without_scanning_the_table(operator):
    make_events(2)
    with CaptureQueriesContext(connection) as queries:
        page = operator.get(CHANGELIST, {"receiver": "tests.testapp.receivers.record"})
    assert not any("DISTINCT" in q["sql"].upper() for q in queries.captured_queries)
    html = page.content.decode()
    for name in (
        "tests.testapp.receivers.flaky",
        "tests.testapp.receivers.record",
        "tests.testapp.signals.pinged",
    ):
        assert f"{name}</a>" in html
    assert list(page.context["cl"].result_list) == []


def test_the_queries_per_changelist_page_do_not_grow_with_the_rows_shown(operator):
    def queries_for(query):
        with CaptureQueriesContext(connection) as captured:
            assert operator.get(CHANGELIST + query).status_code == 200
        return len(captured.captured_queries)

    make_events(3)
    few = queries_for(""), queries_for("?status__exact=failed"), queries_for("?q=mail")
    make_events(45, status=S.DONE)
    make_events(45)
    many = queries_for(""), queries_for("?status__exact=failed"), queries_for("?q=mail")
    assert few == many
    assert min(few) >= 4  # the session, the user, the rows, the summary: the capture works


@postgres_only
def test_large_counts_are_estimated_on_postgresql_and_small_ones_exact(monkeypatch):
    make_events(300)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE outbox_event")
    assert monitoring.count(Event.objects.all()) == (300, False)
    monkeypatch.setattr(monitoring, "ESTIMATE_ABOVE", 100)
    n, estimated = monitoring.count(Event.objects.all())
    assert estimated and 200 <= n <= 400
    assert monitoring.count(Event.objects.filter(status=S.DONE)) == (0, False)


@postgres_only
def test_the_changelist_marks_estimated_counts_on_a_big_table(operator, monkeypatch):
    make_events(300, status=S.DONE)
    make_events(3)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE outbox_event")
    monkeypatch.setattr(monitoring, "ESTIMATE_ABOVE", 100)
    page = operator.get(CHANGELIST)
    summary = page.context["outbox_summary"]()
    assert summary.estimated == {"done"} and summary.counts["failed"] == 3
    assert page.context["cl"].paginator.estimated
    html = page.content.decode()
    assert re.search(r"outbox-done\">done</span>\s*≈", html)
    assert re.search(r"<span title=\"An estimate[^\"]*\">≈</span> \d+ outbox events", html)


# --- rows the pages must show whatever the settings and the data ----------------------------


@override_settings(USE_TZ=False)
def test_with_use_tz_false_the_changelist_and_detail_page_show_events_written_in_that_mode(operator):
    pinged.send(sender="admin", n=1)  # a real send: its times are naive, as USE_TZ=False writes them
    [event] = Event.objects.all()
    assert timezone.is_naive(event.created_at)
    page = operator.get(CHANGELIST)
    assert page.status_code == 200
    assert event.created_at.strftime("%Y-%m-%d %H:%M") in page.content.decode()
    detail = operator.get(change_url(event))
    assert detail.status_code == 200
    assert "tests.testapp.receivers.flaky" in detail.content.decode()
    replayed = operator.post(reverse("admin:outbox_event_discard", args=[event.pk]), follow=True)
    assert replayed.status_code == 200 and Event.objects.get().status == S.DISCARDED


ADMIN_LOG_INSERT = f"INSERT INTO {connection.ops.quote_name('django_admin_log')}"


def write_raw(event, assignment, *params):
    """Set columns of one row by SQL, as a hand-written fix or another program might."""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE outbox_event SET {assignment} WHERE id = %s", [*params, event.pk])


def deeply_nested():
    """JSON nested deeper than Python's json module can read up to 3.12 (it raises RecursionError).

    SQLite's JSON_VALID check refuses more than 1,000 levels (2,000 before 3.45)."""
    depth = 5000 if connection.vendor == "postgresql" else 1000
    return "[" * depth + "]" * depth


def test_a_payload_nested_too_deeply_for_python_is_shown_as_text_and_can_be_discarded(operator):
    [event] = make_events(1)
    write_raw(
        event,
        "payload = " + ("CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"),
        deeply_nested(),
    )
    assert operator.get(CHANGELIST).status_code == 200
    assert operator.get(CHANGELIST, {"q": "mail"}).status_code == 200
    detail = operator.get(change_url(event))
    assert detail.status_code == 200
    html = detail.content.decode()
    if sys.version_info >= (3, 13):
        # Python 3.13 reads and indents these depths (1,000 levels, the most SQLite keeps; 5,000
        # on PostgreSQL): shown as JSON.
        assert "cannot be displayed" not in html
        assert '<pre class="outbox-pre">[\n  [' in html
    else:
        assert "cannot be displayed: nested too deeply" in html
        assert "[[[[[[[[" in html
    response = operator.post(reverse("admin:outbox_event_discard", args=[event.pk]), follow=True)
    assert "1 event discarded." in messages_of(response)
    assert statuses() == {event.pk: S.DISCARDED}


@postgres_only
def test_timestamps_python_cannot_hold_are_shown_as_postgresql_writes_them_and_discard_works(operator):
    due_forever, finished_never = make_events(2)
    write_raw(due_forever, "status = 'pending', available_at = '-infinity', finished_at = NULL")
    write_raw(finished_never, "created_at = '-infinity', finished_at = 'infinity'")
    page = operator.get(CHANGELIST)
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count(">-infinity<") == 2 and html.count(">infinity<") == 1
    assert "oldest due event due at -infinity" in html
    for event in (due_forever, finished_never):
        detail = operator.get(change_url(event))
        assert detail.status_code == 200
        assert "infinity" in detail.content.decode()
        response = operator.post(reverse("admin:outbox_event_discard", args=[event.pk]), follow=True)
        assert "1 event discarded." in messages_of(response)
    assert set(statuses().values()) == {S.DISCARDED}


@pytest.mark.parametrize(
    "term", ["²", "#²", "#١٢", "12²", "#99999999999999999999", "99999999999999999999", "#9223372036854775808"]
)
def test_searching_for_what_is_no_event_id_finds_nothing_without_an_error(operator, term):
    # "²" and "١٢" pass str.isdigit() but not int(); the long ones are beyond a bigint.
    make_events(2)
    page = operator.get(CHANGELIST, {"q": term})
    assert page.status_code == 200
    assert list(page.context["cl"].result_list) == []


def test_search_by_hash_id_finds_an_event_whose_id_has_nineteen_digits(operator):
    # The largest bigint; on MySQL a lesser one of 19 digits, as InnoDB's auto-increment
    # counter survives the test's rollback and later tests' rows need ids above it.
    largest = 9_000_000_000_000_000_000 if connection.vendor == "mysql" else 9_223_372_036_854_775_807
    [event] = make_events(1, id=largest)
    make_events(1, id=1_000_000_000_000_000_000)
    found = operator.get(CHANGELIST, {"q": f"#{event.pk}"}).context["cl"].result_list
    assert [e.pk for e in found] == [event.pk]


def test_pages_and_buttons_for_an_id_beyond_a_bigint_find_nothing(operator):
    make_events(1)
    huge = "99999999999999999999"
    assert operator.get(reverse("admin:outbox_event_change", args=[huge])).status_code in (302, 404)
    for name in ("replay", "discard"):
        assert operator.post(reverse(f"admin:outbox_event_{name}", args=[huge])).status_code == 404


def test_reference_links_quote_text_primary_keys_as_the_django_admin_does(operator, admin_client):
    keyed = Keyed.objects.create(key="../../../../logout_?next=/a")
    [event] = make_events(1, payload=encode_payload(keyed, {}))
    html = operator.get(change_url(event)).content.decode()
    url = reverse("admin:testapp_keyed_change", args=[quote(keyed.pk)])
    assert url.startswith("/admin/testapp/keyed/") and "/../" not in url and "?" not in url
    assert f'<a href="{url}">testapp.Keyed #../../../../logout_?next=/a</a>' in html
    assert admin_client.get(url).context["original"] == keyed  # the link opens that object


def history(client, event):
    return client.get(reverse("admin:outbox_event_history", args=[event.pk])).content.decode()


def test_the_history_page_of_an_event_replayed_or_discarded_by_its_buttons_names_user_and_action(operator):
    replayed, discarded = make_events(2)
    operator.post(reverse("admin:outbox_event_replay", args=[replayed.pk]))
    operator.post(reverse("admin:outbox_event_discard", args=[discarded.pk]))
    page = history(operator, replayed)
    assert "operator" in page and "Replayed (was failed): due now." in page
    page = history(operator, discarded)
    assert "operator" in page and "Discarded (was failed)." in page
    assert LogEntry.objects.count() == 2


def test_a_bulk_action_logs_each_event_up_to_a_limit_then_one_summary_in_two_inserts(operator, monkeypatch):
    monkeypatch.setattr(admin_log, "LOG_EACH_UP_TO", 5)
    events = make_events(12)
    make_events(2, status=S.RUNNING)  # refused: not logged
    with CaptureQueriesContext(connection) as queries:
        response = action(operator, "replay", events[:1], across=True, query="?status__exact=failed")
    assert "12 events replayed: due now." in messages_of(response)
    inserts = [q for q in queries.captured_queries if q["sql"].startswith(ADMIN_LOG_INSERT)]
    assert len(inserts) == 2  # one bulk INSERT of the entries, one summary
    assert LogEntry.objects.count() == 6
    logged = {int(pk) for pk in LogEntry.objects.exclude(object_id=None).values_list("object_id", flat=True)}
    assert len(logged) == 5 and logged <= {e.pk for e in events}
    summary = LogEntry.objects.get(object_id=None)
    assert summary.get_change_message() == "Replayed 7 more events (was failed): due now."
    assert "Replayed (was failed): due now." in history(operator, Event(pk=min(logged)))
    unlogged = next(e for e in events if e.pk not in logged)
    assert "Replayed" not in history(operator, unlogged)


def test_a_bulk_action_within_the_limit_logs_every_event_in_one_insert(operator):
    events = make_events(30)
    with CaptureQueriesContext(connection) as queries:
        action(operator, "discard", events)
    inserts = [q for q in queries.captured_queries if q["sql"].startswith(ADMIN_LOG_INSERT)]
    assert len(inserts) == 1
    assert sorted(int(pk) for pk in LogEntry.objects.values_list("object_id", flat=True)) == sorted(
        e.pk for e in events
    )
    assert set(LogEntry.objects.values_list("user__username", flat=True)) == {"operator"}


# --- queues and ordering keys ------------------------------------------------------------


def test_the_queue_filter_offers_the_registered_queues_and_shows_the_queue_column(operator):
    [fast] = make_events(1, queue="fast")
    make_events(2)
    page = operator.get(CHANGELIST, {"queue": "fast"})
    assert [e.pk for e in page.context["cl"].result_list] == [fast.pk]
    html = page.content.decode()
    for name in ("default", "fast", "slow"):
        assert f"?queue={name}" in html
    assert '<td class="field-queue">fast</td>' in html


def test_a_failed_keyed_event_shows_that_it_blocks_its_key_and_the_events_behind_wait(operator):
    from outbox import queries

    [head] = make_events(1, ordering_key="alice")
    behind = make_events(2, status=S.PENDING, ordering_key="alice")
    Event.objects.filter(pk__in=[e.pk for e in behind]).update(available_at=queries.PARKED)
    html = operator.get(CHANGELIST).content.decode()
    assert html.count('class="outbox-key-blocks"') == 1
    assert html.count('class="outbox-key-blocked"') == 2
    detail = operator.get(change_url(head)).content.decode()
    assert "Blocks its key: the 2 later event(s)" in detail
    detail = operator.get(change_url(behind[0])).content.decode()
    assert f"Waits for event #{head.pk} (failed)" in detail
