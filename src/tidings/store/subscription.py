"""The catch-up subscription engine every store backend shares.

A subscription reads pages of matching events after its durable checkpoint, hands each to the
handler, advances the checkpoint after the handler succeeds (at-least-once), and when it has
caught up waits for a wake-up: in-process appends notify at once, other processes are noticed by
polling every ``poll_interval`` seconds (PostgreSQL adds LISTEN wake-ups on top). A handler that
keeps failing after its retries halts the subscription *at* that event: the checkpoint stays just
before it, ``on_error`` and the log say why, and nothing after it is delivered out of order.
With ``batch=True`` the handler takes a whole page (up to ``page_size`` events) at a time; in
transactional mode that is one transaction per page instead of one per event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from tidings.retry import RetryPolicy
from tidings.store.base import Criteria, Recorded, SubscriptionLag

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_RETRY",
    "ErrorCallback",
    "PageTxHandler",
    "PollingSubscription",
    "SubscriptionSource",
    "Wakeup",
]

log = logging.getLogger("tidings.store.subscription")

DEFAULT_POLL_INTERVAL = 0.1
CHECKPOINT_EVERY = 0.5  # seconds between checkpoint writes while events keep coming
DEFAULT_PAGE_SIZE = 500
#: A few quick retries: a projection that fails on a transient error recovers without a halt.
DEFAULT_RETRY = RetryPolicy(max_retries=3, initial_delay=0.05, max_delay=1.0)

ErrorCallback = Callable[[Recorded, BaseException], Any]
TxHandler = Callable[[Recorded, Any], Any]
# batch=True: the handler takes a page of events (list[Recorded]) instead of one
PageTxHandler = Callable[[list[Recorded], Any], Any]
# append(also=...): called with (connection, recorded events) inside the append transaction
AlsoWrite = Callable[[Any, list[Recorded]], None]


class Wakeup:
    """Fan-out of "something was committed" to every waiting subscription of one store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: set[threading.Event] = set()

    def register(self) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events.add(event)
        return event

    def unregister(self, event: threading.Event) -> None:
        with self._lock:
            self._events.discard(event)

    def notify(self) -> None:
        with self._lock:
            events = list(self._events)
        for event in events:
            event.set()


class SubscriptionSource(Protocol):
    """What a backend gives the engine: reads, checkpoints and an optional shared transaction."""

    def load(self, criteria: Criteria) -> list[Recorded]: ...

    def count(self, criteria: Criteria | None = None) -> int: ...

    def checkpoint(self, name: str) -> int: ...

    def save_checkpoint(self, name: str, position: int) -> None: ...

    def handle_in_transaction(self, name: str, rec: Recorded, handler: TxHandler) -> None:
        """Run ``handler(rec, connection)`` and save ``rec.position`` as the checkpoint of
        ``name`` in one transaction; roll both back if the handler raises."""
        ...

    def handle_page_in_transaction(
        self, name: str, page: list[Recorded], handler: PageTxHandler
    ) -> None:
        """Like ``handle_in_transaction`` for a page: ``handler(todo, connection)`` gets the
        events of ``page`` after the stored checkpoint (none: not called), and the checkpoint
        moves to the last of them in the same transaction."""
        ...


class PollingSubscription:
    """One named subscription running in a background thread; see the module docstring."""

    def __init__(
        self,
        source: SubscriptionSource,
        criteria: Criteria,
        handler: Callable[..., Any],
        *,
        name: str,
        wakeup: Wakeup,
        retry: RetryPolicy | None = None,
        on_error: ErrorCallback | None = None,
        transactional: bool = False,
        batch: bool = False,
        poll_interval: float | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("subscribe(name=...): a non-empty name keys the durable checkpoint")
        if not isinstance(criteria, Criteria):
            raise TypeError(
                f"subscribe(criteria): expected a tidings.store.Criteria, "
                f"got {type(criteria).__name__}"
            )
        if not callable(handler):
            raise TypeError(f"subscribe(handler): expected a callable, got {handler!r}")
        if page_size < 1:
            raise ValueError(f"subscribe(page_size): expected >= 1, got {page_size}")
        self.name = name
        self.criteria = criteria
        self.error: BaseException | None = None
        self.handled = 0  # events the handler finished (read by exporters)
        self.failed = 0  # handler attempts that raised, retries included
        self._source = source
        self._handler = handler
        self._retry = retry if retry is not None else DEFAULT_RETRY
        self._on_error = on_error
        self._transactional = transactional
        self._batch = batch
        self._poll = DEFAULT_POLL_INTERVAL if poll_interval is None else max(0.001, poll_interval)
        self._page_size = page_size
        self._wakeup = wakeup
        self._woken = wakeup.register()
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._position = source.checkpoint(name)
        self._thread = threading.Thread(
            target=self._run, name=f"tidings-subscription-{name}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ public

    @property
    def position(self) -> int:
        """The last position handled (saved when idle, every CHECKPOINT_EVERY s and on stop)."""
        return self._position

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def lag(self) -> SubscriptionLag:
        """Matching events after the position (one COUNT) and the age of the oldest of them
        (a one-row read); exporters call it at scrape time, never the engine."""
        after = max(self.criteria.after_position, self._position)
        behind = dataclasses.replace(self.criteria, after_position=after, limit=None)
        events = self._source.count(behind)
        if not events:
            return SubscriptionLag(0, 0.0)
        oldest = self._source.load(dataclasses.replace(behind, limit=1))
        if not oldest:  # handled between the two reads
            return SubscriptionLag(events, 0.0)
        stored = oldest[0].recorded_at or oldest[0].event.time
        return SubscriptionLag(events, max(0.0, (datetime.now(UTC) - stored).total_seconds()))

    def wait_position(self, position: int, timeout: float = 5.0) -> bool:
        """Block until the handler has finished ``position`` (or a later one); False on timeout."""
        with self._progress:
            return self._progress.wait_for(
                lambda: self._position >= position or not self.running, timeout
            ) and (self._position >= position)

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the event in hand, save the checkpoint and stop; waits up to ``timeout``."""
        self._stopping.set()
        self._woken.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "subscription %r did not stop within %.1fs (its handler is still running); "
                    "it stops after the current event",
                    self.name,
                    timeout,
                )

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PollingSubscription {self.name!r} position={self._position} {state}>"

    # ------------------------------------------------------------------ engine

    def _run(self) -> None:
        saved, saved_at = self._position, time.monotonic()
        try:
            while not self._stopping.is_set():
                self._woken.clear()  # before reading, so a commit during the read still wakes us
                after = max(self.criteria.after_position, self._position)
                page = self._source.load(
                    dataclasses.replace(self.criteria, after_position=after, limit=self._page_size)
                )
                if self._batch and page and not self._stopping.is_set():
                    if not self._deliver(page[0], page):
                        return
                    self._advance(page[-1].position)
                    if self._transactional:
                        saved = page[-1].position
                for rec in () if self._batch else page:
                    if self._stopping.is_set():
                        break
                    if not self._deliver(rec):
                        return
                    self._advance(rec.position)
                    if self._transactional:
                        saved = rec.position
                # Saving is a write: per page it would fight writers in other processes for
                # SQLite's file lock. Save when idle or every CHECKPOINT_EVERY seconds; a
                # crash redelivers at most that much (at-least-once).
                if self._position != saved and (
                    not page or time.monotonic() - saved_at >= CHECKPOINT_EVERY
                ):
                    self._source.save_checkpoint(self.name, self._position)
                    saved, saved_at = self._position, time.monotonic()
                if len(page) < self._page_size:
                    self._woken.wait(self._poll)
        except Exception as exc:  # a store error: report it, the checkpoint is safe
            self.error = exc
            log.exception("subscription %r stopped: the store failed", self.name)
        finally:
            if self._position != saved:
                try:
                    self._source.save_checkpoint(self.name, self._position)
                except Exception:
                    log.exception("subscription %r: could not save its checkpoint", self.name)
            self._wakeup.unregister(self._woken)
            if self._loop is not None:
                self._loop.close()
            with self._progress:
                self._progress.notify_all()

    def _advance(self, position: int) -> None:
        with self._progress:
            self._position = position
            self.handled += 1
            self._progress.notify_all()

    def _call(self, rec: Recorded | list[Recorded], *args: Any) -> None:
        result = self._handler(rec, *args)
        if inspect.isawaitable(result):
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(result)

    def _deliver(self, rec: Recorded, page: list[Recorded] | None = None) -> bool:
        """Hand ``rec`` (batch mode: the ``page`` it starts) to the handler with retries;
        False (halt) when it keeps failing."""
        attempt = 0
        while True:
            try:
                if self._transactional and page is not None:
                    self._source.handle_page_in_transaction(self.name, page, self._call)
                elif self._transactional:
                    self._source.handle_in_transaction(self.name, rec, self._call)
                else:
                    self._call(rec if page is None else page)
                return True
            except Exception as exc:
                attempt += 1
                self.failed += 1
                if self._retry.should_retry(attempt, exc) and not self._stopping.is_set():
                    log.warning(
                        "subscription %r: handler failed on position %d (%s); retry %d",
                        self.name,
                        rec.position,
                        exc,
                        attempt,
                    )
                    if self._stopping.wait(self._retry.delay(attempt)):
                        return False
                    continue
                if self._stopping.is_set():
                    return False
                self.error = exc
                log.error(
                    "subscription %r halted at position %d (event %s, type %s): handler kept "
                    "failing: %s. Its checkpoint stays at %d; fix the handler and subscribe "
                    "again, or reset_subscription(%r, %d) to skip the event deliberately",
                    self.name,
                    rec.position,
                    rec.event.id,
                    rec.event.type,
                    exc,
                    self._position,
                    self.name,
                    rec.position,
                    exc_info=exc,
                )
                if self._on_error is not None:
                    try:
                        self._on_error(rec, exc)
                    except Exception:
                        log.exception("subscription %r: on_error callback failed", self.name)
                return False
