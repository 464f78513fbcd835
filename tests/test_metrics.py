"""Prometheus metrics: what a known run reports, the view's protection, the worker's port,
several workers added up through a multiprocess directory, and a worker without the library."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from prometheus_client.parser import text_string_to_metric_families

from outbox.metrics.views import exposition
from outbox.models import Event
from tests.conftest import ROOT, wait_for, worker_env
from tests.testapp.models import Call
from tests.testapp.observed import QUEUE, observed

pytestmark = pytest.mark.django_db(transaction=True)

OK = "tests.testapp.observed.observed_ok"
BROKEN = "tests.testapp.observed.observed_broken"
ASYNC = "tests.testapp.observed.observed_async"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """The exposition parsed back: {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def send(n: int, prefix: str, **kwargs) -> None:
    with transaction.atomic():
        for i in range(n):
            observed.send(sender=None, key=f"{prefix}{i}", **kwargs)


@pytest.fixture
def fast_retries(settings):
    settings.OUTBOX = {"BACKOFF_BASE_SECONDS": 0.001, "BACKOFF_MAX_SECONDS": 0.001}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_known_run_reports_done_failed_and_backlog(drain, fast_retries, concurrency):
    before = samples(exposition().decode())
    send(3, "fine")
    send(1, "bad", fail=True)  # observed_broken fails twice: a retry, then failed for good

    def drained():
        # The retry falls due up to a millisecond after the failure, and a worker run with
        # once=True may find nothing due in that millisecond and return (a run in CI did).
        drain(queues=[QUEUE], concurrency=concurrency)
        return not Event.objects.filter(queue=QUEUE, status__in=["pending", "running"]).exists()

    wait_for(drained, timeout=30, interval=0.01)
    send(2, "later")  # the backlog: two due events per receiver
    found = samples(exposition().decode())

    def delta(name, **labels):
        return value(found, name, **labels) - value(before, name, **labels)

    assert delta("outbox_events_done_total", queue=QUEUE, receiver=OK) == 4
    assert delta("outbox_events_done_total", queue=QUEUE, receiver=ASYNC) == 4
    assert delta("outbox_events_done_total", queue=QUEUE, receiver=BROKEN) == 3
    assert delta("outbox_events_failed_total", queue=QUEUE, receiver=BROKEN, final="false") == 1
    assert delta("outbox_events_failed_total", queue=QUEUE, receiver=BROKEN, final="true") == 1
    assert delta("outbox_events_failed_total", queue=QUEUE, receiver=OK, final="true") == 0
    # Every call is timed; the latency is of first attempts only.
    assert delta("outbox_receiver_duration_seconds_count", queue=QUEUE, receiver=BROKEN) == 5
    assert delta("outbox_receiver_duration_seconds_count", queue=QUEUE, receiver=ASYNC) == 4
    assert delta("outbox_start_latency_seconds_count", queue=QUEUE, receiver=BROKEN) == 4
    assert delta("outbox_start_latency_seconds_bucket", queue=QUEUE, receiver=OK, le="+Inf") == 4
    # The table's gauges are read, not counted by the worker.
    for receiver in (OK, BROKEN, ASYNC):
        assert value(found, "outbox_backlog_due", queue=QUEUE, receiver=receiver) == 2
        assert value(found, "outbox_running", queue=QUEUE, receiver=receiver) == 0
    assert value(found, "outbox_failed", queue=QUEUE, receiver=BROKEN) == 1
    assert value(found, "outbox_failed", queue=QUEUE, receiver=OK) == 0
    assert value(found, "outbox_oldest_due_age_seconds", queue=QUEUE) >= 0
    assert ("outbox_oldest_due_age_seconds", frozenset({("queue", QUEUE)})) in found


def test_gauges_tell_running_and_due_apart_and_age_the_oldest(drain):
    send(2, "held")
    ids = list(Event.objects.filter(receiver=OK).values_list("id", flat=True))
    # One event held by a worker (lease ahead), one whose worker died (lease expired: due).
    from django.utils import timezone

    now = timezone.now()
    Event.objects.filter(id=ids[0]).update(status="running", available_at=now + timezone.timedelta(minutes=1))
    Event.objects.filter(id=ids[1]).update(status="running", available_at=now - timezone.timedelta(minutes=5))
    found = samples(exposition().decode())
    assert value(found, "outbox_running", queue=QUEUE, receiver=OK) == 1
    assert value(found, "outbox_backlog_due", queue=QUEUE, receiver=OK) == 1
    assert value(found, "outbox_backlog_due", queue=QUEUE, receiver=BROKEN) == 2
    assert value(found, "outbox_oldest_due_age_seconds", queue=QUEUE) >= 299
    # Registered queues with nothing waiting read 0, not a gap.
    assert value(found, "outbox_oldest_due_age_seconds", queue="fast") == 0
    assert (
        "outbox_backlog_due",
        frozenset({("queue", "fast"), ("receiver", "tests.testapp.routed.fast_job")}),
    ) in found


def test_the_view_is_for_staff_the_token_or_allowed_addresses(client, settings):
    url = "/outbox/metrics"
    assert client.get(url).status_code == 403
    User.objects.create_user("clerk", password="pw")
    client.login(username="clerk", password="pw")
    assert client.get(url).status_code == 403
    User.objects.create_user("op", password="pw", is_staff=True)
    client.login(username="op", password="pw")
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "outbox_backlog_due" in response.content.decode()
    client.logout()

    settings.OUTBOX = {"METRICS_TOKEN": "s3cret", "METRICS_ALLOWED_IPS": ["10.0.0.0/8", "::1"]}
    assert client.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get(url, headers={"Authorization": "s3cret"}).status_code == 403
    assert client.get(url, REMOTE_ADDR="10.2.3.4").status_code == 200
    assert client.get(url, REMOTE_ADDR="::1").status_code == 200
    assert client.get(url, REMOTE_ADDR="192.168.1.1").status_code == 403


def test_bad_metrics_settings_are_reported_by_checks(settings):
    from outbox.checks import check_settings

    settings.OUTBOX = {"METRICS_TOKEN": "", "METRICS_ALLOWED_IPS": ["10.0.0.0/8", "nowhere"]}
    problems = {(p.id, p.msg.split(" ")[0]) for p in check_settings()}
    assert ("outbox.E004", "OUTBOX['METRICS_TOKEN']") in problems
    assert ("outbox.E004", "OUTBOX['METRICS_ALLOWED_IPS']") in problems


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return samples(response.read().decode())


def test_a_worker_serves_its_own_metrics_on_its_port(worker_process):
    port = free_port()
    worker = worker_process(
        "--metrics-port", str(port), "--queue", QUEUE, "--no-listen", "--poll-interval", "0.05"
    )
    send(3, "port")
    wait_for(lambda: Call.objects.filter(receiver="observed_ok").count() == 3)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: value(scrape(url), "outbox_events_done_total", queue=QUEUE, receiver=ASYNC) == 3)
    found = scrape(url)
    assert value(found, "outbox_events_done_total", queue=QUEUE, receiver=OK) == 3
    assert value(found, "outbox_receiver_duration_seconds_count", queue=QUEUE, receiver=BROKEN) == 3
    assert worker.process.poll() is None


def test_the_view_adds_up_every_worker_from_the_multiprocess_directory(worker_process, tmp_path, monkeypatch):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    send(2, "first")
    assert worker_process("--once", "--queue", QUEUE, env=env, ready=False).wait(60) == 0
    send(3, "second")
    assert worker_process("--once", "--queue", QUEUE, env=env, ready=False).wait(60) == 0
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per worker process
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    found = samples(exposition().decode())
    assert value(found, "outbox_events_done_total", queue=QUEUE, receiver=OK) == 5
    assert value(found, "outbox_receiver_duration_seconds_count", queue=QUEUE, receiver=ASYNC) == 5
    assert value(found, "outbox_backlog_due", queue=QUEUE, receiver=OK) == 0


# A worker where neither prometheus_client nor opentelemetry can be imported.
_WITHOUT = textwrap.dedent(
    """
    import json, sys
    sys.modules["prometheus_client"] = None
    sys.modules["opentelemetry"] = None
    import django
    django.setup()
    from django.core.management import CommandError, call_command
    from django.db import transaction
    import outbox.metrics, outbox.observability, outbox.tracing
    from outbox.models import Event
    from tests.testapp.models import Call
    from tests.testapp.observed import observed
    result = {"metrics": outbox.metrics.AVAILABLE, "tracing": outbox.tracing.AVAILABLE}
    try:
        call_command("run_outbox", "--metrics-port", "9", "--once")
    except CommandError as exc:
        result["error"] = str(exc)
    with transaction.atomic():
        observed.send(sender=None, key="bare")
    result["traced"] = list(Event.objects.values_list("trace_context", flat=True))
    call_command("run_outbox", "--once", "--queue", "observed", "-v", "0")
    result["ran"] = Call.objects.filter(receiver="observed_ok").count()
    result["left"] = Event.objects.exclude(status="done").count()
    print(json.dumps(result))
    """
)


@pytest.mark.processes
def test_without_the_libraries_the_worker_runs_unchanged_and_the_port_is_refused():
    env = {**worker_env(), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT],
        cwd=ROOT,
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["metrics"] is False and result["tracing"] is False
    assert "prometheus_client" in result["error"] and "django-signal-outbox[metrics]" in result["error"]
    assert result["traced"] == [None, None, None]
    assert result["ran"] == 1 and result["left"] == 0


def test_a_scrape_counts_no_more_than_its_limit(monkeypatch):
    from outbox.metrics import collector

    send(4, "many")  # 4 due events per receiver, 12 in all
    monkeypatch.setattr(collector, "COUNT_LIMIT", 5)
    found = samples(exposition().decode())
    counted = sum(value(found, "outbox_backlog_due", queue=QUEUE, receiver=r) for r in (OK, BROKEN, ASYNC))
    assert counted == 5  # the first five in due order: a lower bound
    assert value(found, "outbox_oldest_due_age_seconds", queue=QUEUE) >= 0


def test_an_event_due_at_minus_infinity_is_the_oldest_not_an_error():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("'-infinity' is PostgreSQL's")
    send(1, "inf")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE outbox_event SET available_at = '-infinity' WHERE receiver = %s", [OK])
    found = samples(exposition().decode())
    assert value(found, "outbox_oldest_due_age_seconds", queue=QUEUE) > 2000 * 365 * 86400
    assert value(found, "outbox_backlog_due", queue=QUEUE, receiver=OK) == 1


def test_a_metrics_port_in_use_stops_the_worker_with_a_clear_error():
    from django.core.management import CommandError, call_command

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"--metrics-port {port}: .*in use"):
            call_command("run_outbox", "--metrics-port", str(port), "--once")
