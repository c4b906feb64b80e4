"""Webhook delivery for the events an application publishes on its in-process ``Bus``.

``attach(bus, store)`` subscribes a ``WebhookSink`` to every event. The sink stores each event
with one delivery row per matching endpoint in one transaction of the store
(``DeliveryQueue.ingest``), so once the handler has returned the deliveries are as durable as
the event: a crash of the application afterwards loses nothing. The same ``DeliveryWorker``
that ``tidings serve`` runs sends them, either in the application (``worker=True``, on a thread
of its own) or in a ``tidings serve`` process on the same store (``worker=False``).

An event already in the store (a store that publishes to this bus after its commits, or a bus
retry) gets deliveries only if it has none, so nothing is sent twice. The bus never imports
this module: webhooks sit above the bus and the store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tidings.bus import Bus, Subscription
from tidings.config import Settings, load
from tidings.event import Event
from tidings.retry import RetryPolicy
from tidings.store import open_store
from tidings.store.base import EventStore
from tidings.webhooks.endpoint import Endpoint, from_settings
from tidings.webhooks.queue import DeliveryQueue
from tidings.webhooks.worker import DeliveryWorker, Router

__all__ = ["ATTACH_RETRY", "WebhookSink", "attach"]

log = logging.getLogger("tidings.webhooks")

#: The sink fails only when the store does: retry on the bus's clock for about a minute.
ATTACH_RETRY = RetryPolicy(max_retries=8, initial_delay=0.1, max_delay=15.0)
REFRESH = 1.0  # seconds between looks at the endpoints (another process may change them)


class WebhookSink:
    """A Bus handler that makes an event's webhook deliveries durable; see the module docstring.

    ``store`` is a store URL (opened here, closed by ``close``) or an open SQLite or PostgreSQL
    store (left open). ``config`` (a path or ``Settings``) brings the endpoints of its
    ``events`` section, as ``tidings serve`` reads them, and the worker's settings; without it
    the endpoints already in the store are used (registered through ``tidings serve``'s API or
    its config). ``worker=False`` leaves sending to a ``tidings serve`` on the same store.
    """

    def __init__(
        self,
        store: str | EventStore,
        *,
        config: str | Path | Settings | None = None,
        endpoints: list[Endpoint] | None = None,
        worker: bool = True,
    ) -> None:
        settings = _settings(config)
        self._owns_store = isinstance(store, str)
        self.store: EventStore = open_store(store) if isinstance(store, str) else store
        try:
            self.queue = DeliveryQueue(self.store)  # type: ignore[arg-type]
            if config is not None:
                ev = settings.events
                self.queue.sync_config_endpoints(from_settings(ev) if ev.enabled else [])
            for ep in endpoints or ():
                self.queue.save_endpoint(ep)
        except BaseException:
            if self._owns_store:
                self.store.close()
            raise
        self.router = Router()
        self._endpoints: list[Endpoint] = []
        self._looked_at = float("-inf")
        self._lock = threading.Lock()
        self.subscription: Subscription | None = None
        self._runner = _WorkerThread(self.queue, settings) if worker else None
        self._refresh()

    @property
    def worker(self) -> DeliveryWorker | None:
        return None if self._runner is None else self._runner.worker

    def __call__(self, event: Event) -> None:
        """Store ``event`` and its deliveries (one transaction); raises if the store fails,
        so the bus retries it."""
        self._refresh()
        if self.queue.ingest([event], self.router) and self._runner is not None:
            self._runner.wake()

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._looked_at < REFRESH:
                return
            self._looked_at = time.monotonic()
        endpoints = self.queue.endpoints()
        if endpoints != self._endpoints:
            self._endpoints = endpoints
            self.router.update(endpoints)
            if self._runner is not None:
                self._runner.reload()

    def close(self, timeout: float = 10.0) -> None:
        """Unsubscribe, let the worker finish what is on the wire (the rest stays pending),
        then close the queue (and the store when it was opened here)."""
        if self.subscription is not None:
            self.subscription.unsubscribe()
            self.subscription = None
        if self._runner is not None:
            self._runner.stop(timeout)
            self._runner = None
        self.queue.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> WebhookSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def attach(
    bus: Bus,
    store: str | EventStore,
    *,
    config: str | Path | Settings | None = None,
    endpoints: list[Endpoint] | None = None,
    pattern: str = "**",
    worker: bool = True,
    retry: RetryPolicy | None = ATTACH_RETRY,
) -> WebhookSink:
    """Deliver every event published on ``bus`` (matching ``pattern``) to the webhook
    endpoints; returns the sink, whose ``close()`` detaches it. See ``WebhookSink``."""
    sink = WebhookSink(store, config=config, endpoints=endpoints, worker=worker)
    try:
        sink.subscription = bus.subscribe(pattern, sink, retry=retry, name="tidings.webhooks")
    except BaseException:
        sink.close()
        raise
    return sink


def _settings(config: str | Path | Settings | None) -> Settings:
    if config is None:
        return Settings()
    if isinstance(config, Settings):
        return config
    if isinstance(config, str | Path):
        return load(config)
    raise TypeError(
        f"attach(config=...): expected a config file path or tidings.config.Settings, "
        f"got {type(config).__name__}"
    )


class _WorkerThread:
    """A DeliveryWorker on an event loop of its own thread, for applications without one."""

    def __init__(self, queue: DeliveryQueue, settings: Settings) -> None:
        server, ev = settings.server, settings.events
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="tidings-webhooks-worker", daemon=True
        )
        self._thread.start()
        self.worker = self._run(self._make(queue, server.workers, float(server.lease), ev))
        self._run(self.worker.start())

    @staticmethod
    async def _make(queue: DeliveryQueue, workers: int, lease: float, ev: Any) -> DeliveryWorker:
        # built on the loop: the worker's asyncio objects belong to it
        return DeliveryWorker(
            queue,
            concurrency=workers,
            lease=lease,
            guard_config_endpoints=ev.guard_config_endpoints,
            allow_networks=[ipaddress.ip_network(n, strict=False) for n in ev.allow_networks],
            sender_process=False,
        )

    def _run(self, coro: Any, timeout: float | None = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self.worker.wake)

    def reload(self) -> None:
        asyncio.run_coroutine_threadsafe(self.worker.reload(), self.loop)

    def stop(self, timeout: float) -> None:
        try:
            released = self._run(self.worker.stop(timeout), timeout + 10.0)
            if released:
                log.info("webhooks: %d deliveries handed back unsent (still pending)", released)
        except concurrent.futures.TimeoutError:
            log.warning("webhooks: the delivery worker did not stop within %.1fs", timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.loop.close()
