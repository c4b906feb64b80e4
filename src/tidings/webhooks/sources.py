"""Where webhook deliveries come from besides ``POST /events``: the store, or a transport.

``events.source`` picks one for ``tidings serve``:

- ``store`` (``StoreFeed``): the store's live subscription (catch-up, then LISTEN on PostgreSQL
  or polling on SQLite), so every writer counts: another process using tidings, or a plain SQL
  ``INSERT`` into the events table. Each page of events gets its delivery rows in one
  transaction that also moves the subscription's checkpoint, so a crash at any point neither
  loses an event nor writes its deliveries twice. A consumer that has never run starts at the
  end of the store (``DeliveryQueue.source_start``): switching it on does not send the history.
- a transport URL (``TransportFeed``): a consumer group on the broker. Each message appends its
  event to the store with its deliveries in one transaction (``DeliveryQueue.ingest``) before
  it is acked; a redelivered message finds its event stored with deliveries and adds none.

Both call ``on_deliveries`` after committing new deliveries, so a worker in this process sends
them at once instead of at its next poll. The in-process ``Bus`` is a third source, attached
by ``tidings.webhooks.attach``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tidings.config import WebhookSettings
from tidings.event import Event
from tidings.retry import RetryPolicy
from tidings.store.base import Criteria, Recorded
from tidings.store.subscription import PollingSubscription
from tidings.transport import SubscribeOptions, TransportError, TransportSubscription
from tidings.transports import open_transport
from tidings.urls import redact_url
from tidings.webhooks.queue import DeliveryQueue

__all__ = ["FEED_RETRY", "Feed", "StoreFeed", "TransportFeed", "open_feed"]

log = logging.getLogger("tidings.webhooks.sources")

Route = Callable[[Event], Sequence[str]]

#: Failures here are the database's (a lost connection, a busy lock): retry for minutes rather
#: than halt the store subscription or dead-letter a broker message.
FEED_RETRY = RetryPolicy(max_retries=12, initial_delay=0.2, max_delay=15.0)
RESTART_DELAY = (0.5, 30.0)  # a stopped store subscription is started again: first, most


class Feed(Protocol):
    """A running source of deliveries; ``tidings serve`` starts and stops one."""

    async def start(self) -> None: ...

    async def stop(self, timeout: float = 5.0) -> None: ...

    def health(self) -> dict[str, Any]: ...


class StoreFeed:
    """Deliveries for every event appended to the store, by whichever writer."""

    def __init__(
        self,
        queue: DeliveryQueue,
        route: Route,
        *,
        consumer: str,
        on_deliveries: Callable[[], None] | None = None,
        poll_interval: float | None = None,
    ) -> None:
        self.queue = queue
        self.route = route
        self.consumer = consumer
        self.created = 0  # deliveries written since start
        self.start_position = 0
        self._on_deliveries = on_deliveries
        self._poll_interval = poll_interval
        self._sub: PollingSubscription | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    def start_sync(self) -> None:
        self.start_position = self.queue.source_start(self.consumer)
        self._sub = self._subscribe()
        self._watcher = threading.Thread(
            target=self._watch, name=f"tidings-webhooks-feed-{self.consumer}", daemon=True
        )
        self._watcher.start()
        log.info(
            "webhooks follow the event store as %r from position %d",
            self.consumer,
            max(self.start_position, self._sub.position),
        )

    def _subscribe(self) -> PollingSubscription:
        return self.queue.store.subscribe(
            Criteria(after_position=self.start_position),
            self._handle,
            name=self.consumer,
            transactional=True,
            batch=True,
            retry=FEED_RETRY,
            poll_interval=self._poll_interval,
        )

    def _handle(self, page: list[Recorded], conn: Any) -> None:
        self.created += self.queue.write_deliveries(conn, page, self.route)

    def _watch(self) -> None:
        """Wake the worker after each committed page; start a stopped subscription again."""
        sub = self._sub
        assert sub is not None
        seen, made = sub.position, self.created
        delay = RESTART_DELAY[0]
        while not self._stopping.is_set():
            if sub.wait_position(seen + 1, timeout=0.5):
                seen = sub.position
                delay = RESTART_DELAY[0]
                if self.created != made and self._on_deliveries is not None:
                    made = self.created
                    self._on_deliveries()
                continue
            if sub.running or self._stopping.wait(delay):
                continue
            log.error(
                "webhooks: following the event store stopped at position %d (%s); starting again",
                sub.position,
                sub.error,
            )
            delay = min(delay * 2, RESTART_DELAY[1])
            try:
                self._sub = sub = self._subscribe()
            except Exception as exc:
                log.error("webhooks: cannot follow the event store yet: %s", exc)

    async def stop(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.stop_sync, timeout)

    def stop_sync(self, timeout: float = 5.0) -> None:
        """Finish the page in hand (its deliveries and checkpoint commit together) and stop."""
        self._stopping.set()
        if self._sub is not None:
            self._sub.stop(timeout)
        if self._watcher is not None:
            self._watcher.join(timeout)

    def health(self) -> dict[str, Any]:
        sub = self._sub
        running = sub is not None and sub.running
        return {
            "kind": "store",
            "consumer": self.consumer,
            "ok": running,
            "position": sub.position if sub is not None else None,
            "deliveries_created": self.created,
            "error": None if sub is None or sub.error is None else str(sub.error),
        }


class TransportFeed:
    """Deliveries for every event published on a transport, taken as a consumer group."""

    def __init__(
        self,
        queue: DeliveryQueue,
        route: Route,
        url: str,
        *,
        consumer: str,
        ack_wait: float = 30.0,
        on_deliveries: Callable[[], None] | None = None,
        max_in_flight: int = 16,
    ) -> None:
        self.queue = queue
        self.route = route
        self.consumer = consumer
        self.url = redact_url(url)
        self.created = 0
        self.received = 0
        self.error: str | None = None
        self.transport = open_transport(url)  # a bad scheme or missing client fails here
        self._url = url
        self._connecting: asyncio.Future[None] | None = None
        self._options = SubscribeOptions(
            group=consumer, ack_wait=ack_wait, retry=FEED_RETRY, max_in_flight=max_in_flight
        )
        self._on_deliveries = on_deliveries
        self._sub: TransportSubscription | None = None

    async def start(self) -> None:
        """Connect and subscribe; if the broker is not there yet, keep trying in the background
        (``health`` says so) rather than keep ``tidings serve`` from starting."""
        if not await self._connect():
            self._connecting = asyncio.ensure_future(self._keep_connecting())

    async def _connect(self) -> bool:
        try:
            await self.transport.start()
            self._sub = await self.transport.subscribe("**", self._handle, self._options)
        except TransportError as exc:
            self.error = str(exc)
            with contextlib.suppress(Exception):
                await self.transport.close()
            self.transport = open_transport(self._url)
            return False
        self.error = None
        log.info("webhooks consume %s as group %r", self.url, self.consumer)
        return True

    async def _keep_connecting(self) -> None:
        delay = RESTART_DELAY[0]
        while True:
            log.error("webhooks: %s; trying again in %.1fs", self.error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY[1])
            if await self._connect():
                return

    async def _handle(self, event: Event) -> None:
        """Commit the event and its deliveries; the message is acked only after this returns."""
        made = await asyncio.to_thread(self.queue.ingest, [event], self.route)
        self.received += 1
        if made:
            self.created += made
            if self._on_deliveries is not None:
                self._on_deliveries()

    async def stop(self, timeout: float = 5.0) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.close(timeout)
        await self.transport.close(timeout)

    def health(self) -> dict[str, Any]:
        h = self.transport.health()
        return {
            "kind": "transport",
            "url": self.url,
            "consumer": self.consumer,
            "ok": h.ok and self._sub is not None,
            "state": h.state.value,
            "lag": h.lag,
            "received": self.received,
            "deliveries_created": self.created,
            "error": self.error or h.last_error,
        }


def open_feed(
    events: WebhookSettings,
    queue: DeliveryQueue,
    route: Route,
    on_deliveries: Callable[[], None] | None = None,
) -> Feed | None:
    """The feed ``events.source`` names; None for ``http`` (``POST /events`` accepts)."""
    if events.source == "http":
        return None
    if events.source == "store":
        return StoreFeed(queue, route, consumer=events.source_consumer, on_deliveries=on_deliveries)
    return TransportFeed(
        queue,
        route,
        events.source,
        consumer=events.source_consumer,
        ack_wait=float(events.source_ack_wait),
        on_deliveries=on_deliveries,
    )
