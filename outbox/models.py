"""The outbox table: one row per send per deferred receiver."""

from __future__ import annotations

import datetime
from typing import Any, Self

from django.db import models
from django.db.models import Count, Q
from django.utils.translation import gettext_lazy as _

from . import queries

__all__ = ["Event", "EventQuerySet"]


class EventQuerySet(models.QuerySet["Event"]):
    """``Event.objects``: events selected by what operators, monitors and the admin ask of
    them, and counted per status in one ``GROUP BY``.

    The methods chain with each other and with ``filter()``, as any queryset's do::

        Event.objects.failed().filter(receiver="myapp.receivers.send_email").count()
        Event.objects.using("outbox").unfinished().count_by_status()

    Each filter is spelled as the condition of the partial index that serves it (see
    ``Event.Meta.indexes``), because SQLite uses a partial index only when the query's
    ``WHERE`` holds the index's condition term by term; PostgreSQL is less particular.
    (SQLite matches ``status = %s`` with its bound value, but not a bound ``IN`` list: there
    :meth:`unfinished`, :meth:`due`, :meth:`parked`, :meth:`keyed` and :meth:`of_key` read
    the table; tests/test_queryset.py says so.)
    """

    def with_status(self, *statuses: str) -> Self:
        """Events in any of ``statuses``: ``status = %s`` for one (SQLite matches the
        partial indexes' terms with it, not with a one-value ``IN``), ``IN`` for more."""
        if len(statuses) == 1:
            return self.filter(status=statuses[0])
        return self.filter(status__in=statuses)

    def pending(self) -> Self:
        """Events waiting for an attempt, due or not (``outbox_event_due``)."""
        return self.with_status(Event.Status.PENDING)

    def running(self) -> Self:
        """Events a worker claimed, its lease live or expired (``outbox_event_due``)."""
        return self.with_status(Event.Status.RUNNING)

    def done(self) -> Self:
        """Events whose receiver returned (``outbox_event_finished``)."""
        return self.with_status(Event.Status.DONE)

    def failed(self) -> Self:
        """Events out of attempts, or failed for good, until replayed or discarded
        (``outbox_event_finished``)."""
        return self.with_status(Event.Status.FAILED)

    def discarded(self) -> Self:
        """Events an operator discarded: they never run (``outbox_event_finished``)."""
        return self.with_status(Event.Status.DISCARDED)

    def unfinished(self) -> Self:
        """Pending and running events: the rows of ``outbox_event_due`` (and of
        ``outbox_event_queue_due``), few in a healthy outbox."""
        return self.filter(status__in=[Event.Status.PENDING, Event.Status.RUNNING])

    def finished(self) -> Self:
        """Done, failed and discarded events: the rows of ``outbox_event_finished``, its
        condition spelled as ORs as the index spells it."""
        return self.filter(
            Q(status=Event.Status.DONE) | Q(status=Event.Status.FAILED) | Q(status=Event.Status.DISCARDED)
        )

    def due(self, now: datetime.datetime | None = None) -> Self:
        """What a worker would claim at ``now``: pending events whose time has come and
        running ones whose lease expired, in ``outbox_event_due``'s (available_at, id) order.

        ``now`` defaults to the clock workers claim by (the database's on PostgreSQL)."""
        now = queries.database_now(self.db) if now is None else now
        return self.unfinished().filter(available_at__lte=now)

    def parked(self) -> Self:
        """Events parked behind a failed event of their ordering key: the last range of
        ``outbox_event_due``, until it is replayed, discarded or pruned."""
        return self.unfinished().filter(available_at__gte=queries.parked())

    def overdue(self) -> Self:
        """Running events whose sync receiver is past its timeout and still runs in a
        worker thread (failed, held until the thread returns: see ``outbox.concurrent``)."""
        return self.unfinished().filter(status=Event.Status.RUNNING, worker__endswith=queries.OVERDUE_MARK)

    def keyed(self) -> Self:
        """Events of an ordering key that still hold it or wait their turn (pending,
        running or failed): the rows of ``outbox_event_key``, its condition spelled out."""
        return self.filter(
            ordering_key__isnull=False,
            status__in=[Event.Status.PENDING, Event.Status.RUNNING, Event.Status.FAILED],
        )

    def of_key(self, receiver: str, key: str) -> Self:
        """The events of one receiver and ordering key that still hold it or wait their turn,
        through ``outbox_event_key`` in id order."""
        return self.filter(
            receiver=receiver,
            ordering_key=key,
            status__in=[Event.Status.PENDING, Event.Status.RUNNING, Event.Status.FAILED],
        )

    def in_queues(self, *queues: str) -> Self:
        """Events of any of ``queues`` (``run_outbox --queue``): ``queue = %s`` for one."""
        if len(queues) == 1:
            return self.filter(queue=queues[0])
        return self.filter(queue__in=queues)

    def count_by(self, *columns: str) -> dict[tuple[Any, ...], int]:
        """How many events there are per value of ``columns`` (fields or annotations): one
        ``GROUP BY``, keyed by the tuple of values, groups with no event left out.

        The queryset's ordering is dropped: ordered, every row would be a group of its own."""
        counts: dict[tuple[Any, ...], int] = {}
        for *values, n in self.order_by().values_list(*columns).annotate(n=Count("pk")):
            # Summed, not assigned: two groups apart in SQL may be one value in Python.
            counts[tuple(values)] = counts.get(tuple(values), 0) + n
        return counts

    def count_by_status(self) -> dict[str, int]:
        """How many events there are per status (one ``GROUP BY``), statuses with none left
        out."""
        return {status: n for (status,), n in self.count_by("status").items()}


class Event(models.Model):
    """One deferred receiver call, written in the sender's transaction.

    ``available_at`` is when a worker may next claim the row: the next attempt time while
    ``pending``, the lease expiry while ``running``. One column serves both so that one
    partial index finds both due events and events whose worker died.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")
        DISCARDED = "discarded", _("discarded")

    id = models.BigAutoField(primary_key=True)
    signal = models.CharField(max_length=255, help_text=_("Dotted path of the signal."))
    receiver = models.CharField(max_length=255, help_text=_("Dotted path of the receiver."))
    payload = models.JSONField(help_text=_("The signal's sender and arguments, encoded."))
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField()
    available_at = models.DateTimeField(
        help_text=_("Next attempt while pending; lease expiry while running.")
    )
    # NULL, not "", while no worker holds it: the fence in queries.complete() tests it.
    lease_token = models.CharField(max_length=32, null=True, blank=True, editable=False)  # noqa: DJ001
    worker = models.CharField(max_length=255, blank=True, help_text=_("Worker that last claimed it."))
    # How the attempt of the current claim was counted (see queries.claim()). True: by a
    # batch claim, one for every row, not knowing which receiver a death would be in, so
    # a reclaim after its worker died gives it back. False: counted for this row alone
    # (run alone, it was in hand if its worker died), or not counted yet (reclaimed,
    # waiting its turn). NULL until first claimed, which the INSERTs leave it.
    batch_attempt = models.BooleanField(null=True, editable=False)
    # The queue a worker drains (run_outbox --queue). The column also has a database
    # default (migration 0005), so rows written by code older than it get "default".
    queue = models.CharField(max_length=64, default="default", help_text=_("Queue that runs it."))
    # Events of one receiver and key run one at a time in id order (outbox.routing).
    ordering_key = models.CharField(  # noqa: DJ001 - NULL: unordered, and out of the key index
        max_length=255, null=True, blank=True, help_text=_("Runs after the earlier events of its key.")
    )
    # Coalescing (connect(dedupe_key=...)): unique per receiver among fresh rows, pending and
    # never claimed (outbox_event_dedupe; queries.DEDUPE_CONFLICT says why "never claimed").
    dedupe_key = models.CharField(  # noqa: DJ001 - NULL: not coalesced, and out of the index
        max_length=255, null=True, blank=True, help_text=_("Not sent again while this is pending.")
    )
    # The sender's W3C trace context ({"traceparent": ..., "tracestate": ...}) when an
    # OpenTelemetry span was active at send time (outbox.tracing); NULL otherwise.
    trace_context = models.JSONField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField()
    # When the receiver's last attempt started, written with its outcome (queries.complete,
    # queries.record_failure); NULL before, and for rows finished by older code.
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_traceback = models.TextField(blank=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        verbose_name = _("outbox event")
        verbose_name_plural = _("outbox events")
        permissions = [
            ("replay_event", "Can replay outbox events"),
            ("discard_event", "Can discard outbox events"),
        ]
        indexes = [
            # Serves the claim in queries.claim(): only due or leased rows are indexed, so
            # its cost does not grow with the number of done, failed or discarded rows.
            models.Index(
                fields=["available_at", "id"],
                name="outbox_event_due",
                condition=models.Q(status__in=["pending", "running"]),
            ),
            # Serves the claim of named queues (run_outbox --queue): one ordered range per
            # queue. The claim of every queue keeps outbox_event_due.
            models.Index(
                fields=["queue", "available_at", "id"],
                name="outbox_event_queue_due",
                condition=models.Q(status__in=["pending", "running"]),
            ),
            # Serves the head-of-key test of each claim statement in queries.py, and parking:
            # the unfinished rows of one receiver and key, in id order. Unkeyed rows and
            # done or discarded ones are left out, so it stays the size of the backlog of
            # ordered events.
            models.Index(
                fields=["receiver", "ordering_key", "id"],
                name="outbox_event_key",
                condition=models.Q(ordering_key__isnull=False, status__in=["pending", "running", "failed"]),
            ),
            # Serves what operators ask of finished events: the failed count and the done
            # rate of ``outbox_status``, replaying failed events, and pruning old done
            # events in (finished_at, id) order. Pending and running rows are left out, so
            # claiming never writes to it. The condition is spelled as ORs, not IN, so
            # that SQLite uses the index for ``status = 'failed'`` too.
            models.Index(
                fields=["status", "finished_at", "id"],
                name="outbox_event_finished",
                condition=models.Q(status="done") | models.Q(status="failed") | models.Q(status="discarded"),
            ),
        ]
        constraints = [
            # Serves coalescing: INSERT ... ON CONFLICT DO NOTHING (queries.DEDUPE_CONFLICT)
            # skips a send whose receiver and key a fresh row holds. Only rows that carry a
            # key and were never claimed are in it, so claiming takes a row out, and no
            # worker's UPDATE (retry, hand-back) can put one back in.
            models.UniqueConstraint(
                fields=["receiver", "dedupe_key"],
                name="outbox_event_dedupe",
                condition=models.Q(batch_attempt__isnull=True, dedupe_key__isnull=False, status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.receiver} ({self.status})"

    @property
    def lease_expires_at(self):
        """When another worker may take this event, while it is running."""
        return self.available_at if self.status == self.Status.RUNNING else None
