"""Per-key ordering: events of one receiver and key run one at a time, in send order."""

from __future__ import annotations

import io
import json
import threading

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import outbox
from outbox import queries
from outbox.exceptions import RegistrationError, SerializationError
from outbox.models import Event
from tests.conftest import skip_locked_only, wait_for
from tests.test_scale import explained_as_sent
from tests.testapp.models import Call
from tests.testapp.routed import overlaps, steps
from tests.testapp.signals import ordered

pytestmark = pytest.mark.django_db(transaction=True)

RECEIVER = "tests.testapp.routed.in_order"


def send(account, step, **kwargs):
    ordered.send(sender="bank", account=account, step=step, **kwargs)


def fix(account, step):
    Call.objects.create(receiver="fixed", key=f"{account}:{step}", worker_pid=0)


def claimed(**options):
    """The receivers' (key, step) of what one claim takes, handed back after."""
    token, rows = queries.claim("default", options.pop("batch_size", 100), 60, "test", **options)
    queries.release("default", token, [row.id for row in rows])
    return sorted(Event.objects.get(pk=row.id).ordering_key for row in rows)


def make_due():
    """Skip backoff waits (parked events stay parked)."""
    Event.objects.filter(status="pending").exclude(available_at=queries.PARKED).update(
        available_at=timezone.now()
    )


def test_the_key_is_stored_and_an_int_key_as_its_decimal_string():
    send("alice", 1)
    send(42, 2)
    assert list(Event.objects.order_by("id").values_list("ordering_key", "queue")) == [
        ("alice", "default"),
        ("42", "default"),
    ]


def test_a_claim_takes_only_the_head_of_each_key():
    for step in range(3):
        send("alice", step)
        send("bob", step)
    assert claimed() == ["alice", "bob"]


@pytest.mark.parametrize(
    "key, problem",
    [
        (1.5, "float"),
        (True, "bool"),
        (b"x", "bytes"),
        ("x" * 256, "longer than 255"),
        (10**300, "longer than 255"),
        ("a\x00b", "NUL"),
    ],
)
def test_a_bad_key_is_refused_at_send_and_the_transaction_goes_on(key, problem):
    with transaction.atomic():
        with pytest.raises(SerializationError, match=problem):
            send(key, 1)
        send("fine", 2)  # the transaction is not poisoned
    assert list(Event.objects.values_list("ordering_key", flat=True)) == ["fine"]


def test_ordering_key_and_queue_are_refused_for_on_commit_delivery():
    def now(sender, **kwargs):
        pass

    with pytest.raises(RegistrationError, match="delivery='outbox' only"):
        outbox.connect(ordered, now, delivery="on_commit", ordering_key=lambda sender, **kw: 1)
    with pytest.raises(RegistrationError, match="delivery='outbox' only"):
        outbox.connect(ordered, now, delivery="on_commit", queue="emails")


def test_the_key_function_gets_the_sender_the_signal_and_the_arguments():
    seen = []

    def key(sender, **kwargs):
        seen.append((sender, kwargs))
        return None

    from tests.testapp import routed

    outbox.connect(ordered, routed.in_order, ordering_key=key, dispatch_uid="probe", max_attempts=3)
    try:
        send("alice", 1)
    finally:
        outbox.disconnect(ordered, dispatch_uid="probe")
    assert seen == [("bank", {"signal": ordered, "account": "alice", "step": 1})]


@override_settings(OUTBOX={"BACKOFF_BASE_SECONDS": 30})
def test_keys_that_differ_only_in_case_or_a_trailing_space_are_other_keys(drain):
    # MySQL's usual collations would call these equal; the outbox compares keys as bytes.
    send("alice", 1, fail="until_fixed")
    drain()  # fails: "alice" is blocked while it waits for its retry
    send("alice", 2)
    send("Alice", 1)
    send("alice ", 1)
    assert claimed() == ["Alice", "alice "]


@override_settings(OUTBOX={"BACKOFF_BASE_SECONDS": 30})
def test_a_failed_event_blocks_its_key_and_parks_what_comes_after(drain):
    send("alice", 1, fail="until_fixed")
    drain()  # fails, retried after its backoff: its key stays blocked meanwhile
    send("alice", 2)
    send("bob", 1)
    assert claimed() == ["bob"]
    make_due()
    assert claimed() == ["alice", "bob"]  # the head, due again
    for _ in range(5):
        make_due()
        drain()
    head = Event.objects.get(ordering_key="alice", status="failed")
    assert head.attempts == 3
    assert steps("bob") == [1] and steps("alice") == []
    behind = Event.objects.get(ordering_key="alice", status="pending")
    assert behind.available_at == queries.PARKED  # out of the claim's range
    send("alice", 3)  # written parked: its key is blocked already
    assert Event.objects.filter(ordering_key="alice", available_at=queries.PARKED).count() == 2
    send("bob", 2)
    drain()
    assert steps("bob") == [1, 2] and steps("alice") == []


@pytest.mark.parametrize("action", ["outbox_replay", "outbox_discard"])
def test_replaying_or_discarding_the_failed_event_unblocks_its_key(drain, action):
    send("alice", 1, fail="until_fixed")
    send("alice", 2)
    send("alice", 3)
    for _ in range(4):
        drain()
        make_due()
    assert Event.objects.filter(status="failed").count() == 1
    fix("alice", 1)
    call_command(action, "--receiver", RECEIVER, stdout=open("/dev/null", "w"))  # noqa: SIM115
    drain()
    assert steps("alice") == ([1, 2, 3] if action == "outbox_replay" else [2, 3])
    assert not Event.objects.exclude(status__in=["done", "discarded"]).exists()
    assert overlaps() == []


def test_pruning_the_failed_event_unblocks_its_key(drain):
    send("alice", 1, fail="until_fixed")
    send("alice", 2)
    for _ in range(4):
        drain()
        make_due()
    Event.objects.filter(status="failed").update(finished_at=timezone.now() - timezone.timedelta(days=30))
    call_command("outbox_prune", "--status", "failed", "--older-than", "7d", stdout=open("/dev/null", "w"))  # noqa: SIM115
    drain()
    assert steps("alice") == [2]


# --- real worker processes -------------------------------------------------------------


def send_interleaved(accounts, count, **first):
    """``count`` steps per account, interleaved, committed at once; step 0 gets ``first``."""
    with transaction.atomic():
        for step in range(count):
            for account in accounts:
                send(account, step, **(first if step == 0 else {}), hold=0.005)


def all_done(total):
    return lambda: Event.objects.filter(status="done").count() == total


def test_two_workers_run_each_key_in_send_order_with_a_head_that_fails_once(worker_process):
    accounts = ["alice", "bob", "carol", "dave", "erin"]
    workers = [worker_process("--batch-size", "4", ready=False) for _ in range(2)]
    for worker in workers:
        worker.wait_ready()
    send_interleaved(accounts, 12, fail="once")
    wait_for(all_done(60), timeout=120)
    for account in accounts:
        assert steps(account) == list(range(12))
    assert Call.objects.filter(receiver="failed").count() == 5
    assert overlaps() == []


def test_racing_workers_never_run_two_events_of_one_key_at_once(worker_process):
    # One hot key and a few others, batches of one: every claim races for the same head.
    workers = [worker_process("--batch-size", "1", ready=False) for _ in range(3)]
    for worker in workers:
        worker.wait_ready()
    send_interleaved(["hot"], 40)
    send_interleaved(["a", "b"], 10)
    wait_for(all_done(60), timeout=120)
    assert overlaps() == []
    assert steps("hot") == list(range(40))
    assert len(set(Call.objects.filter(receiver="end").values_list("worker_pid", flat=True))) > 1


def test_concurrent_workers_run_each_key_in_send_order(worker_process):
    accounts = [f"account{i}" for i in range(20)]
    send_interleaved(accounts, 6, fail="once")
    for _ in range(2):
        worker_process("--concurrency", "10", "--batch-size", "20")
    wait_for(all_done(120), timeout=120)
    for account in accounts:
        assert steps(account) == list(range(6))
    assert overlaps() == []


def test_other_keys_keep_flowing_while_a_worker_process_holds_one_blocked(worker_process):
    send("alice", 1, fail="until_fixed")
    send("alice", 2)
    worker = worker_process()
    wait_for(lambda: Event.objects.filter(status="failed").exists())
    for step in range(5):
        send("bob", step)
    wait_for(lambda: steps("bob") == list(range(5)))
    assert steps("alice") == []
    fix("alice", 1)
    call_command("outbox_replay", "--receiver", RECEIVER, stdout=io.StringIO())
    wait_for(lambda: steps("alice") == [1, 2])
    worker.signal()
    assert worker.wait() == 0


@skip_locked_only  # concurrent writers: PostgreSQL's advisory lock, MySQL's outbox_key_lock row
def test_a_second_sender_of_a_key_waits_for_the_first_to_commit():
    # Ids of one key follow commit order: else a claim could run the later event while
    # the earlier one is still uncommitted, and out of order.
    second = threading.Thread(target=_send_on_own_connection, args=("alice", 2))
    with transaction.atomic():
        send("alice", 1)
        second.start()
        second.join(1.0)
        assert second.is_alive()  # blocked on the key's lock
    second.join(30)
    assert not second.is_alive()
    assert Event.objects.filter(ordering_key="alice").count() == 2


def _send_on_own_connection(account, step):
    from django.db import connections

    try:
        send(account, step)
    finally:
        connections.close_all()


@override_settings(OUTBOX={"BACKOFF_BASE_SECONDS": 30})
def test_status_shows_a_blocked_key_and_the_events_behind_it(drain):
    send("alice", 1, fail="until_fixed")
    send("alice", 2)
    send("alice", 3)
    send("bob", 1)
    for _ in range(3):
        drain()
        make_due()
    out = io.StringIO()
    call_command("outbox_status", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert (report["blocked_keys"], report["blocked_events"], report["due"]) == (1, 2, 0)
    text = io.StringIO()
    call_command("outbox_status", stdout=text)
    assert (
        "blocked: 1 ordering key(s) held by a failed event, 2 event(s) waiting behind them" in text.getvalue()
    )


def test_the_claims_read_the_key_index_even_when_one_key_holds_most_rows():
    # A broken key's backlog skews the statistics: the head-of-key test must stay an index
    # probe (an EXISTS would let PostgreSQL pick a sequential scan per candidate).
    when = connection.ops.adapt_datetimefield_value(timezone.now())
    mysql = connection.vendor == "mysql"
    seq = "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 5000) "
    insert = (
        f"INSERT INTO outbox_event ({connection.ops.quote_name('signal')}, receiver, payload, status, "
        "attempts, max_attempts, available_at, worker, created_at, last_error, last_traceback, queue, "
        "ordering_key) "
    )
    rows = "SELECT 's', %s, '{}', 'pending', 0, 3, %s, '', %s, '', '', 'default', 'hot' FROM seq"
    with connection.cursor() as cursor:
        # MySQL and MariaDB put the WITH after INSERT, and cap recursion at 1000 by default.
        if mysql:
            depth = "max_recursive_iterations" if connection.mysql_is_mariadb else "cte_max_recursion_depth"
            cursor.execute(f"SET SESSION {depth} = 5001")
        cursor.execute(insert + seq + rows if mysql else seq + insert + rows, [RECEIVER, when, when])
        analyze = {"postgresql": "ANALYZE outbox_event", "mysql": "ANALYZE TABLE outbox_event"}
        cursor.execute(analyze.get(connection.vendor, "ANALYZE"))
        if mysql:
            cursor.fetchall()
    with CaptureQueriesContext(connection) as captured:
        claimed()
        claimed(queues=["default", "other"])
    # MySQL: the claim's read is the SELECT ... FOR UPDATE SKIP LOCKED before its UPDATE.
    marker = "SKIP LOCKED" if mysql else "SET status = 'running'"
    claims = [q["sql"] for q in captured.captured_queries if marker in q["sql"]]
    assert len(claims) == 2
    with connection.cursor() as cursor:
        for sql in claims:
            if mysql:
                cursor.execute(f"EXPLAIN {sql}")
                plan = [
                    dict(zip([c[0] for c in cursor.description], row, strict=True))
                    for row in cursor.fetchall()
                ]
                earlier = [step for step in plan if step["table"] == "earlier"]
                assert earlier and all(step["key"] == "outbox_event_key_my" for step in earlier), plan
                # ("<union1,2>": the few ids the queues' ranges yielded.)
                assert all(step["type"] != "ALL" for step in plan if step["table"] == "outbox_event"), plan
            elif connection.vendor == "postgresql":
                statement, pinned = explained_as_sent(sql)
                cursor.execute(statement)
                if pinned:
                    cursor.nextset()
                plan = "\n".join(row[0] for row in cursor.fetchall())
                # (The UPDATE may hash-join its 100 rows with a small table: not the claim's read.)
                assert "using outbox_event_key on outbox_event earlier" in plan, plan
                assert "Seq Scan on outbox_event earlier" not in plan, plan
                assert "Seq Scan on outbox_event outbox_event_1" not in plan, plan
            else:
                cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
                plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
                assert "USING INDEX outbox_event_key" in plan, plan
                assert not any(line.startswith("SCAN outbox_event") for line in plan.splitlines()), plan
