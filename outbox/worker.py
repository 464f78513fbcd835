"""The worker: claims committed events in batches and calls their receivers.

``python manage.py run_outbox`` is a thin shell over :class:`Worker`. The loop: claim a
batch (one statement, :func:`outbox.claims.claim`) and hand the claim to the dispatcher,
which runs its receivers (one after another, or ``concurrency`` at once: see
:mod:`outbox.concurrent`) and records the batch through it: successes done in one
statement, each failure with its traceback. One heartbeat thread (:mod:`outbox.heartbeat`)
extends the leases of the claims in hand, so a slow receiver is never run twice, and hands
back the unstarted rest of a batch whose receiver runs long; a worker that dies leaves rows
that any worker reclaims when their lease expires.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal as signals
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, OperationalError, connections

from . import claims, limits, monitoring, planner_statistics, pruning, routing
from .checks import unapplied_migrations
from .concurrent import recycle_connections
from .conf import DEFAULTS, settings
from .dispatch import Dispatcher, InProcessDispatcher, get_dispatcher
from .heartbeat import Heartbeat
from .wakeup import Listener, can_listen

__all__ = ["Worker", "reconnect_pause"]

logger = logging.getLogger("outbox")

# Longest a worker spends pruning at one visit, so events wait at most this long for it.
_PRUNE_BUDGET_SECONDS = 1.0

# Longest pause between looks at the table while a sender that did not notify is still in
# its transaction (see Worker._idle).
_SETTLE_MAX = 0.1

# A busy PostgreSQL worker claims from where its previous batch stood in the due index
# (queries.claim_after: it steps over the dead entries of finished events only once), and
# from the index's start whenever such a claim comes back short, and at least this often,
# or nine times as long as the last claim from the start took, if longer (so that those
# take at most a tenth of a busy worker's time behind many dead entries).
_FULL_CLAIM_EVERY = 1.0

# A worker that claims ahead (OUTBOX["WORKER_CLAIM_AHEAD"]) does so only after a batch whose
# receivers all ran within this many seconds: the rows it claims ahead wait for the batch in
# hand, and other workers could have run them meanwhile. A batch that turns slow hands the
# claim made ahead back with its own unstarted rest (outbox.claims.Claim.behind).
_AHEAD_AFTER_BATCHES_UNDER = 0.1

# Longest the batch in hand waits for the claim made ahead to start (Worker._start_claim_ahead).
_AHEAD_START_WAIT = 0.05

# Seconds between a PostgreSQL worker's looks at the table's dead rows and at the oldest
# transaction holding the xmin horizon (outbox.monitoring.attention), logged as warnings.
_ATTENTION_INTERVAL = 60.0

# Seconds between a PostgreSQL worker's looks at the freshness of the table's planner
# statistics (outbox.planner_statistics; OUTBOX["WORKER_ANALYZE"]).
_ANALYZE_CHECK_INTERVAL = 10.0

# Errors that mean "the database went away", after which the worker reconnects.
_CONNECTION_ERRORS = (OperationalError, InterfaceError)


class Worker:
    """Drains the outbox of one database.

    ``once=True`` drains everything due now and returns; otherwise it runs until
    :meth:`stop` (or SIGTERM/SIGINT when run from the main thread). ``concurrency`` (default
    ``OUTBOX["CONCURRENCY"]``) receivers run at once; 1 runs them one after another. With
    ``check_migrations=True`` (as ``run_outbox`` runs it), :meth:`run` first waits for the
    database and raises ``ImproperlyConfigured`` if its outbox migrations are not applied.
    """

    def __init__(
        self,
        database: str | None = None,
        *,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        lease_seconds: float | None = None,
        listen: bool = True,
        once: bool = False,
        dispatcher: Dispatcher | None = None,
        check_migrations: bool = False,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> None:
        self.database = database or settings.database
        self.batch_size = batch_size or settings.BATCH_SIZE
        self.poll_interval = settings.POLL_INTERVAL if poll_interval is None else poll_interval
        self.concurrency = settings.CONCURRENCY if concurrency is None else concurrency
        if not limits.SETTINGS["CONCURRENCY"].holds(self.concurrency):
            raise ImproperlyConfigured(
                f"the worker's concurrency must be {limits.SETTINGS['CONCURRENCY'].describe()}, "
                f"not {self.concurrency!r}"
            )
        self.dispatcher = dispatcher or get_dispatcher(concurrency=self.concurrency)
        # One after another, a batch's successes are written done by the next claim's
        # statement (one round trip per batch); self._owed is the claim that owes them.
        self._carry_done = False
        if isinstance(self.dispatcher, InProcessDispatcher) and self.concurrency == 1:
            self.dispatcher.defer_done = self._carry_done = True
        self._owed: claims.Claim | None = None
        # Claiming ahead (OUTBOX["WORKER_CLAIM_AHEAD"]): one thread with its own connection
        # claims batch N+1, carrying batch N-1's successes, while batch N runs.
        # self._ahead: that claim in flight and the owed claim it settles; a claim made
        # ahead that failed leaves that one in self._unsettled.
        self._ahead_pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[Future[claims.Claim], claims.Claim | None] | None = None
        self._unsettled: list[claims.Claim] = []
        self._last_run = 0.0  # seconds the last batch's receivers took
        self._resume: Any = None  # the position the next claim may start from (claim_after)
        self._next_full_claim = 0.0  # monotonic time after which a claim starts at the start
        # A relay hands rows to a queue and needs a lease that covers the wait there.
        self.lease_seconds = (
            lease_seconds or getattr(self.dispatcher, "lease_seconds", None) or settings.LEASE_SECONDS
        )
        self._refuse_bad_numbers()
        #: The queues this worker drains; None: every queue (outbox.routing).
        self.queues = None if queues is None else [routing.check_queue(queue) for queue in queues] or None
        self.listen = listen and not once and can_listen(self.database)
        self.claim_ahead = (
            settings.WORKER_CLAIM_AHEAD
            and self._carry_done
            and not once
            and connections[self.database].vendor == "postgresql"
        )
        self.once = once
        self.check_migrations = check_migrations
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = False
        self.processed = 0
        self._listener: Listener | None = None
        self._settled = False  # armed, and a claim since then found nothing: may sleep
        self._settle = 0.0  # the current pause while senders are in flight
        self._heartbeat = Heartbeat(self.database, self.lease_seconds)
        self._signal_count = 0
        self._next_prune = 0.0  # monotonic time of the next pruning visit; 0: at start
        self._next_attention = 0.0  # monotonic time of the next look at the table's health
        self._next_analyze_check = 0.0  # ... and at its planner statistics

    def _refuse_bad_numbers(self) -> None:
        """Refuse to start on a setting or an argument out of its range, rather than die of
        it later (an OverflowError in a wait, a datetime, or a query)."""
        for name in DEFAULTS:
            getattr(settings, name)  # each raises ImproperlyConfigured, naming its problem
        for name, key in (
            ("batch_size", "BATCH_SIZE"),
            ("poll_interval", "POLL_INTERVAL"),
            ("lease_seconds", "LEASE_SECONDS"),
        ):
            value, allowed = getattr(self, name), limits.SETTINGS[key]
            if not allowed.holds(value):
                raise ImproperlyConfigured(f"the worker's {name} must be {allowed.describe()}, not {value!r}")

    # --- lifecycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop after the receivers in hand."""
        self.stopping = True
        stop = getattr(self.dispatcher, "stop", None)
        if stop is not None:
            stop()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal_count += 1
        if self._signal_count > 1:
            logger.warning("second %s: exiting at once", signals.Signals(signum).name)
            os._exit(1)
        logger.info("%s: finishing the receivers in hand, then exiting", signals.Signals(signum).name)
        self.stop()

    def run(self) -> int:
        """Run until stopped (or, with ``once``, until nothing is due); return events handled."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signals.SIGTERM, signals.SIGINT):
                handlers[signum] = signals.signal(signum, self._on_signal)
        self._heartbeat.start()
        logger.info(
            "worker %s on database %r: batch %d, concurrency %d, poll %.1fs, lease %.0fs, %s",
            self.name,
            self.database,
            self.batch_size,
            self.concurrency,
            self.poll_interval,
            self.lease_seconds,
            "LISTEN/NOTIFY" if self.listen else "polling only",
        )
        if self.queues:
            logger.info("worker %s drains queues %s", self.name, ", ".join(self.queues))
        try:
            if self.check_migrations:
                self._start_up()
            self._loop()
        finally:
            close = getattr(self.dispatcher, "close", None)
            if close is not None:
                close()  # the receivers in hand finish, under the heartbeat's leases
            self._write_owed()
            self._close_ahead()
            self._heartbeat.stop()
            if self._listener:
                self._listener.close()
            for signum, handler in handlers.items():
                signals.signal(signum, handler)
        logger.info("worker %s stopped after %d events", self.name, self.processed)
        return self.processed

    def _start_up(self) -> None:
        """Check the outbox migrations, waiting out an unreachable database with backoff
        (a server restarting, a network not up yet): only a configuration error stops a
        starting worker. A stop request ends the wait."""
        failures = 0
        while not self.stopping:
            try:
                _require_migrated(self.database)
                return
            except _CONNECTION_ERRORS as exc:
                failures += 1
                pause = reconnect_pause(failures)
                logger.warning("database unavailable at start (%s); retrying in %.1fs", exc, pause)
                connections[self.database].close()
                self._sleep(pause)

    def _loop(self) -> None:
        failures = 0
        while not self.stopping:
            try:
                if self.listen and self._listener is None:
                    self._listener = Listener(self.database, settings.NOTIFY_CHANNEL)
                    self._settled = False
                handled = self._run_batch()
                failures = 0
                self._maybe_prune()
                self._maybe_warn()
                self._maybe_analyze()
                if handled:
                    if self._listener is not None:
                        self._listener.disarm()  # busy: senders need not notify
                    self._settled = False
                    continue
                if self.once:
                    if not self._in_flight():
                        self._write_owed()
                        return
                    time.sleep(0.01)  # rows in hand may fail and fall due again
                    continue
                recycle_connections()
                # Inside the try: the LISTEN connection breaks here when the server
                # restarts while the worker is idle.
                self._idle()
            except _CONNECTION_ERRORS + (_listener_errors()) as exc:
                failures += 1
                pause = reconnect_pause(failures)
                logger.warning("database unavailable (%s); reconnecting in %.1fs", exc, pause)
                self._reset_connections()
                self._sleep(pause)

    def _reset_connections(self) -> None:
        if self._listener:
            self._listener.close()
            self._listener = None
        connections[self.database].close()
        if self._ahead_pool is not None:
            self._ahead_pool.submit(_close_connection, self.database).result()

    def _idle(self) -> None:
        """After a claim that found nothing: wait for a notification or the poll interval.

        A listening worker first arms its listener, so that senders notify it, and then
        claims once more before it sleeps (events committed meanwhile). While a sender
        that did not notify is still in its transaction, the worker looks again after a
        short pause (1 ms, doubling up to _SETTLE_MAX) instead of sleeping through the
        commit.
        """
        listener = self._listener
        if listener is not None and not self._settled:
            if listener.arm():
                self._settled, self._settle = True, 0.0
                return  # claim once more, then sleep
            self._settle = min(_SETTLE_MAX, self.poll_interval, max(0.001, self._settle * 2))
            listener.wait(self._settle)
            return
        self._wait(self.poll_interval)

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Short slices, so SIGTERM is honoured promptly whatever the poll interval.
            if self._listener is not None:
                if self._listener.wait(min(remaining, 0.25)):
                    return
            else:
                time.sleep(min(remaining, 0.1))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def _maybe_prune(self) -> None:
        """Between batches, at most every PRUNE_INTERVAL: delete old done events.

        A visit stops after _PRUNE_BUDGET_SECONDS. If old rows remain, the next visit
        comes after nine times as long as this one took, so catching up on a large backlog
        takes at most a tenth of the worker's time; then visits return to PRUNE_INTERVAL.
        """
        after = settings.prune_after
        if after is None or time.monotonic() < self._next_prune:
            return
        started = time.monotonic()
        result = pruning.prune(
            self.database,
            after,
            deadline=started + _PRUNE_BUDGET_SECONDS,
            should_stop=lambda: self.stopping,
        )
        elapsed = time.monotonic() - started
        self._next_prune = time.monotonic() + (settings.PRUNE_INTERVAL if result.complete else 9 * elapsed)
        if result.total:
            logger.info("pruned %d done events finished over %s ago", result.total, after)

    def _maybe_warn(self) -> None:
        """Every _ATTENTION_INTERVAL on PostgreSQL: warn of what slows every claim (dead
        rows VACUUM has not removed, a transaction that keeps it from removing them)."""
        if self.once or time.monotonic() < self._next_attention:
            return
        self._next_attention = time.monotonic() + _ATTENTION_INTERVAL
        if connections[self.database].vendor != "postgresql":
            return
        try:
            notes = monitoring.table_attention(self.database)
        except DatabaseError as exc:
            if isinstance(exc, _CONNECTION_ERRORS):
                raise
            logger.debug("could not read the table's statistics: %s", exc)
            return
        for note in notes:
            logger.warning("%s (manage.py outbox_status shows it)", note)

    def _maybe_analyze(self) -> None:
        """Every _ANALYZE_CHECK_INTERVAL on PostgreSQL, between batches: ANALYZE the table
        if its statistics are stale (outbox.planner_statistics), so the claim keeps its plan."""
        if self.once or not settings.WORKER_ANALYZE or time.monotonic() < self._next_analyze_check:
            return
        self._next_analyze_check = time.monotonic() + _ANALYZE_CHECK_INTERVAL
        if connections[self.database].vendor != "postgresql":
            return
        try:
            planner_statistics.analyze_if_stale(self.database)
        except DatabaseError as exc:
            if isinstance(exc, _CONNECTION_ERRORS):
                raise
            logger.debug("could not analyze the table: %s", exc)

    # --- one batch -------------------------------------------------------------------

    def run_batch(self) -> int:
        """Claim one batch and hand it to the dispatcher, its outcome written before this
        returns; return how many were claimed."""
        try:
            return self._run_batch()
        finally:
            self._write_owed()

    def _run_batch(self) -> int:
        """:meth:`run_batch` in the loop: the batch's successes may stay owed, written done
        by the statement of the next claim (which the loop makes at once, batch or none),
        and the next batch may be claimed while this one runs (:attr:`claim_ahead`)."""
        self._settle_unsettled()
        owed, self._owed = self._owed, None
        ahead, self._ahead = self._ahead, None
        after = self._resume if time.monotonic() < self._next_full_claim else None
        if ahead is not None:
            # Claimed while the batch just run was running: that batch is still owed.
            future, settles = ahead
            try:
                claim = future.result()
            except BaseException:
                self._owed = owed
                if settles is not None:
                    self._unsettled.append(settles)  # its successes are still owed
                raise
            claim.behind = None
        else:
            try:
                claim = self._claim(settle=owed, after=after)
            except BaseException:
                self._owed = owed  # its successes are still owed
                raise
        # In the loop's next claim: the batch just run (made ahead: not carried yet).
        carried, owed = owed is not None or ahead is not None, owed if ahead is not None else None
        if not claim.rows and (carried or after is not None):
            # The claim's snapshot saw the rows it wrote done still running, so the next
            # event of their ordering keys was not yet claimable; or it started at a
            # position, and due rows may lie before it; or it was made ahead, before the
            # batch just run had ended: look once more, from the start, before idling
            # (only at the end of a burst).
            try:
                claim = self._claim(settle=owed)
            except BaseException:
                self._owed = owed
                raise
            ahead = owed = None
        self._resume = claim.position if len(claim) == self.batch_size else None
        if not claim.rows:
            return 0
        if self._may_claim_ahead(claim):
            self._ahead = (self._start_claim_ahead(owed, behind=claim), owed)
        elif owed is not None:
            owed.finish()  # no claim to carry them: written now (the end of a burst)
        if ahead is None:
            # The heartbeat keeps the rows still the claim's leased until it has settled (a
            # row already run but not yet written done must not be reclaimed either), and
            # may hand back the unstarted rest while a receiver runs long. (A claim made
            # ahead is held from the moment it is made.)
            self._heartbeat.hold(claim)
        began = time.monotonic()
        try:
            self.processed += self.dispatcher.dispatch(claim)
        finally:
            self._last_run = time.monotonic() - began
            if self._carry_done:
                self._owed = claim
        return len(claim)

    def _may_claim_ahead(self, claim: claims.Claim) -> bool:
        """Whether to claim the next batch while ``claim`` runs: a full batch (more may be
        due) after a quick one, while not stopping."""
        return (
            self.claim_ahead
            and not self.stopping
            and len(claim) == self.batch_size
            and self._last_run < _AHEAD_AFTER_BATCHES_UNDER
        )

    def _start_claim_ahead(self, settle: claims.Claim | None, behind: claims.Claim) -> Future[claims.Claim]:
        """Claim the next batch from the claim-ahead thread, carrying ``settle``'s successes."""
        if self._ahead_pool is None:
            self._ahead_pool = ThreadPoolExecutor(1, thread_name_prefix="outbox-claim-ahead")
        after = behind.position if time.monotonic() < self._next_full_claim else None
        started = threading.Event()
        future = self._ahead_pool.submit(self._claim_behind, settle, after, behind, started)
        # Let the claim start before the batch does. The thread needs the interpreter lock
        # to send its statement, and a thread that asks for the lock gets it only when its
        # holder blocks, or after sys.getswitchinterval() (5 ms): the receivers of a quick
        # batch would run first, and the claim would overlap nothing. Waiting here hands
        # the lock over; it comes back when the claim thread blocks, on the database.
        started.wait(_AHEAD_START_WAIT)
        return future

    def _claim_behind(
        self, settle: claims.Claim | None, after: Any, behind: claims.Claim, started: threading.Event
    ) -> claims.Claim:
        """The claim-ahead thread's work: the next batch, held by the heartbeat at once."""
        started.set()
        recycle_connections()
        claim = self._claim(settle=settle, after=after)
        if claim.rows:
            claim.behind = behind
            self._heartbeat.hold(claim)
        return claim

    def _claim(self, settle: claims.Claim | None = None, after: Any = None) -> claims.Claim:
        began = time.monotonic()
        claim = claims.claim(
            self.database,
            self.batch_size,
            self.lease_seconds,
            self.name,
            queues=self.queues,
            settle=settle,
            after=after,
        )
        if after is None:
            took = time.monotonic() - began
            self._next_full_claim = time.monotonic() + max(_FULL_CLAIM_EVERY, 9 * took)
        return claim

    def _write_owed(self) -> None:
        """Write done the successes the last claim still owes (retried through a restart),
        and hand back a claim made ahead, unstarted."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            future, settles = ahead
            try:
                future.result().finish()
            except Exception as exc:  # noqa: BLE001 - raised in its thread; the rows wait out their lease
                logger.warning("the claim made ahead failed: %s", exc)
                if settles is not None:
                    self._unsettled.append(settles)
        self._settle_unsettled()
        owed, self._owed = self._owed, None
        if owed is not None:
            owed.finish()

    def _settle_unsettled(self) -> None:
        """Write done the successes a failed claim made ahead was to carry."""
        while self._unsettled:
            self._unsettled.pop(0).finish()

    def _close_ahead(self) -> None:
        """Close the claim-ahead thread's connection, and the thread."""
        pool, self._ahead_pool = self._ahead_pool, None
        if pool is not None:
            pool.submit(_close_connection, self.database).result()
            pool.shutdown()

    def _in_flight(self) -> bool:
        busy = getattr(self.dispatcher, "busy", None)
        return bool(busy and busy())


def _close_connection(alias: str) -> None:
    """Close this thread's connection to ``alias`` (broken or not)."""
    with contextlib.suppress(DatabaseError):
        connections[alias].close()


def reconnect_pause(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row to reach a database or broker:
    1 s, doubling, at most 10 s."""
    return min(10.0, 0.5 * 2 ** min(failures, 5))


def _require_migrated(alias: str) -> None:
    """Raise ``ImproperlyConfigured`` if ``alias`` lacks outbox migrations (a connection
    error propagates: the database may come back)."""
    unapplied = unapplied_migrations(alias)
    if unapplied:
        raise ImproperlyConfigured(
            f"Database {alias!r} has {unapplied} unapplied outbox migration(s): the worker "
            f"cannot run there. Run 'manage.py migrate outbox --database {alias}' (outbox.W001)."
        )


def _listener_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.OperationalError,)
