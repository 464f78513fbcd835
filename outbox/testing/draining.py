"""``drain()``: run the due events in the test's own process, on the test's connection.

It claims rows with the worker's own claim (:func:`outbox.claims.claim`) and runs them with
the worker's own pieces (:func:`outbox.execution.prepare`, ``call_receiver``,
``record_failure``), so a test sees the worker's behaviour: ordering keys, queues,
attempts, backoff, failures recorded. What differs is what a test needs: a receiver's
exception is raised again (by default), and inside a test transaction each receiver runs
in a savepoint, so that a database error in it cannot break the test's transaction.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.db import connections, transaction

from .. import claims, execution, queries
from ..conf import settings
from ..exceptions import DispatchError, OutboxError

__all__ = ["DrainLimitExceeded", "Ran", "drain"]

#: The ``worker`` column of rows run by drain(), so they can be told apart in a test.
WORKER = "outbox.testing"

# Longer than any test: no lease may expire while drain() holds a batch.
_LEASE_SECONDS = 3600.0


class DrainLimitExceeded(OutboxError):
    """drain() ran more events than its ``limit``: receivers that keep sending events."""


@dataclass(frozen=True)
class Ran:
    """One event drain() ran, and how it went."""

    id: int
    signal: str
    receiver: str
    #: 1 on the event's first attempt, 2 on its first retry, ...
    attempt: int
    #: What the receiver raised (or why it could not be called); None on success.
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """True if the receiver returned."""
        return self.error is None


def drain(
    *,
    using: str | None = None,
    queues: Sequence[str] | None = None,
    raise_errors: bool = True,
    delayed: bool = False,
    limit: int = 1000,
) -> list[Ran]:
    """Run every due event now, in this process, until none is due; return what ran.

    Works inside ``django.test.TestCase`` (the rows the test wrote are uncommitted and
    visible on its connection only, which is the one used here) and in
    ``TransactionTestCase`` / ``django_db(transaction=True)`` tests. Events that receivers
    send while it runs are run too, if due.

    ``raise_errors``: a receiver's exception is raised again, with the receiver's own
    traceback, once its failure is recorded as the worker would record it and the rest of
    the batch is handed back. False: failures are only recorded (a retry after backoff, or
    ``failed``), and listed in the result with their ``error``.

    ``delayed``: also run pending events that are not due yet (``delay=``, a retry waiting
    its backoff): they are made due first, once, so an event failing here is not retried
    in the same call. Events parked behind a failed event of their ordering key stay parked.

    ``using``: the database holding the events (default: ``OUTBOX["DATABASE"]``);
    ``queues``: only these queues (default: every queue); ``limit``: raise
    :class:`DrainLimitExceeded` after running more events than that.
    """
    alias = using or settings.database
    if delayed:
        _make_due(alias)
    ran: list[Ran] = []
    # A failed event whose retry falls due while this runs (a short backoff) is not run
    # again here: once per call, whatever the timing. Its retry time, to put it back.
    retries: dict[int, datetime.datetime] = {}
    while True:
        # Up to limit + 1 rows at once: even if every retry so far is due again, a claim
        # that takes nothing new is one with nothing new to take.
        claim = claims.claim(alias, limit + 1, _LEASE_SECONDS, WORKER, queues=queues)
        for row in claim.rows:
            if row.id in retries:
                queries.put_back(alias, claim.token, row.id, retries[row.id])
        claim = claims.Claim(alias, claim.token, [row for row in claim.rows if row.id not in retries])
        if not claim.rows:
            return ran
        try:
            _run_batch(claim, ran, retries, raise_errors)
        finally:
            claim.finish()
        if len(ran) > limit:
            raise DrainLimitExceeded(
                f"drain() ran {len(ran)} events, more than its limit of {limit}: do receivers keep "
                f"sending events? Pass a higher limit= if that is expected"
            )


def _run_batch(
    claim: claims.Claim, ran: list[Ran], retries: dict[int, datetime.datetime], raise_errors: bool
) -> None:
    decoder, payloads = execution.decode_batch(claim.rows)
    while (row := claim.next()) is not None:
        started = time.perf_counter()
        if row.alone:  # an orphan of a worker that died: its attempt is counted first
            attempts = claim.run_alone(row.id)
            if attempts is None:
                claim.ran(row.id, False)
                continue
            row = replace(row, attempts=attempts)
        failure, written = _run_one(claim, row, payloads[row.id], decoder, started)
        claim.ran(row.id, failure is None, recorded=written)
        ran.append(Ran(row.id, row.signal, row.receiver, row.attempts, failure))
        if failure is not None:
            retry_at = _retry_at(claim.database, row.id)
            if retry_at is not None:
                retries[row.id] = retry_at
            if raise_errors:
                raise failure


class _Failed(Exception):
    """Carries a receiver's failure out of its savepoint, so that atomic() rolls it back."""

    def __init__(self, failure: BaseException) -> None:
        self.failure = failure


def _run_one(
    claim: claims.Claim, row: queries.Claimed, payload: Any, decoder: Any, started: float
) -> tuple[BaseException | None, bool]:
    """Run one row; return its failure (recorded) or None on success, and whether the
    event was written done already (an ``atomic=True`` receiver's own transaction does)."""
    ready = execution.prepare(claim, row, payload, decoder)
    if ready is None:  # prepare() recorded why, for good: read it back to report it
        return DispatchError(
            f"event {row.id} ({row.receiver}) failed before its receiver ran: "
            f"{_last_error(claim.database, row.id)}"
        ), False
    if connections[claim.database].in_atomic_block:
        # Inside a test transaction, a database error in the receiver would abort the whole
        # transaction (PostgreSQL), and with it the test's later queries: a savepoint
        # confines it. In autocommit there is nothing to protect, and the worker uses none.
        try:
            with transaction.atomic(using=claim.database):
                failure = execution.call_receiver(ready)
                if failure is not None:
                    raise _Failed(failure)
        except _Failed as failed:
            failure = failed.failure
    else:
        failure = execution.call_receiver(ready)
    if failure is not None:
        execution.record_failure(claim, row, failure, started, permanent=False)
    return failure, ready.written


def _retry_at(alias: str, event_id: int) -> datetime.datetime | None:
    """When a failed event is to be tried again; None if it failed for good."""
    from ..models import Event  # the app registry is ready by the time a test drains

    pending = Event.objects.using(alias).filter(id=event_id, status=Event.Status.PENDING)
    return pending.values_list("available_at", flat=True).first()


def _last_error(alias: str, event_id: int) -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT last_error FROM {queries.TABLE} WHERE id = %s", [event_id])
        found = cursor.fetchone()
    return found[0] if found else "(the row is gone)"


def _make_due(alias: str) -> int:
    """Make the pending events not yet due, due now (not those parked: see queries.PARKED)."""
    from ..models import Event  # the app registry is ready by the time a test drains

    now = queries.database_now(alias)
    return (
        Event.objects.using(alias)
        .filter(status=Event.Status.PENDING, available_at__gt=now, available_at__lt=queries.parked())
        .update(available_at=now)
    )
