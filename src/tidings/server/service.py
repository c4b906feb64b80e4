"""The running service: store, delivery queue, router and worker wired from settings.

The HTTP app and the CLI both drive this object, so `tidings serve`, `tidings dlq` and the tests
share one way of accepting events and one set of rules about which endpoint gets what.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidings.config import Settings, load
from tidings.event import Event
from tidings.store import open_store
from tidings.store.base import Criteria, EventStore
from tidings.urls import redact_url
from tidings.webhooks.endpoint import from_settings
from tidings.webhooks.queue import (
    Claimed,
    DeliveryQueue,
    QueueStats,
    WebhookQueueFull,
    replay_bound,
)
from tidings.webhooks.sources import Feed, open_feed
from tidings.webhooks.worker import DeliveryWorker, Router

__all__ = ["Accepted", "Replay", "Service"]

log = logging.getLogger("tidings.server")

STALLED_AFTER = 15.0  # seconds without a worker heartbeat before /health says unhealthy
DEGRADED_AT = 0.9  # share of events.queue_size open before /health says degraded


@dataclass(frozen=True, slots=True)
class Accepted:
    ids: list[str]
    positions: list[int]
    deliveries: int


@dataclass(frozen=True, slots=True)
class Replay:
    deliveries: int  # created (or, in a dry run, that would be)
    per_endpoint: dict[str, int]
    dry_run: bool


class Service:
    """One process's worth of tidings: open with ``start``, close with ``stop``."""

    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self._config_mtime = _mtime(config_path)
        self.store: EventStore = open_store(settings.store.url)
        try:
            self.queue = DeliveryQueue(self.store)  # type: ignore[arg-type]
        except BaseException:
            self.store.close()
            raise
        self.router = Router()
        self.worker = self._make_worker()
        self._loop: asyncio.AbstractEventLoop | None = None
        # events.source: what else feeds the queue (None: only POST /events). POST /events
        # keeps writing its events' deliveries itself with any source; feeds skip events that
        # already have deliveries, so nothing is delivered twice.
        try:
            self.feed: Feed | None = open_feed(
                settings.events, self.queue, self.router, self._deliveries_made
            )
        except BaseException:
            self.queue.close()
            self.store.close()
            raise
        self.triggers: Any = None  # the TriggerService, when triggers are configured
        self._catalog: Any = None  # its TriggerCatalog (config file + saved triggers)
        self.started_at = time.time()
        self.accepted_count = 0
        self._open_guess = 0
        self._open_counted_at = -1.0
        self._sync_config_endpoints()

    def _make_worker(self) -> DeliveryWorker:
        s, ev = self.settings.server, self.settings.events
        return DeliveryWorker(
            self.queue,
            concurrency=s.workers,
            lease=float(s.lease),
            guard_config_endpoints=ev.guard_config_endpoints,
            allow_networks=self.allow_networks,
            on_disable=lambda ep, reason: self._refresh_router(),
            sender_process=s.use_sender_process(),
        )

    @property
    def allow_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.settings.events.allow_networks]

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.worker.start()
        if self.feed is not None:
            await self.feed.start()
        wanted = bool(self.settings.triggers)
        if not wanted:
            wanted = await asyncio.to_thread(self._has_saved_triggers)
        if wanted:
            await self.start_triggers()
        log.info(
            "tidings service started: store %s, %d endpoint(s)",
            redact_url(self.settings.store.url),
            len(self.queue.endpoints()),
        )

    def _has_saved_triggers(self) -> bool:
        from tidings.triggers.saved import saved_triggers_for  # noqa: PLC0415

        try:
            saved = saved_triggers_for(self.settings.store.url)
            if saved is None:
                return False
            try:
                return bool(saved.list(limit=1))
            finally:
                saved.close()
        except Exception as exc:  # the processor then starts with the first saved trigger
            log.warning("saved triggers not read at start: %s", exc)
            return False

    async def start_triggers(self) -> None:
        """Run the processor and the action workers over the config file's triggers and the
        ones saved through the API (``TriggerCatalog``: a trigger saved before an event was
        stored is applied to it). At start when there are any; else on the first trigger
        saved through the API. A no-op when running, or before ``start``."""
        if self.triggers is not None or self._loop is None:
            return
        from tidings.triggers.saved import open_catalog  # noqa: PLC0415
        from tidings.triggers.service import TriggerService, load_triggers  # noqa: PLC0415

        catalog = await asyncio.to_thread(
            open_catalog, load_triggers(self.settings), self.settings.store.url
        )
        try:
            self.triggers = TriggerService.from_settings(
                self.settings, self.store, delivery_queue=self.queue, index_source=catalog
            )
        except BaseException:
            catalog.close()
            raise
        self._catalog = catalog
        await self.triggers.start()

    async def triggers_changed(self) -> None:
        """A trigger was saved, changed or deleted through this server's API: start the
        processor if it is not running, else rebuild its index now (other processes see the
        change at their next page)."""
        if self.triggers is None:
            await self.start_triggers()
        elif self._catalog is not None:
            await asyncio.to_thread(self._catalog.refresh)

    async def stop(self, timeout: float = 10.0) -> None:
        if self.triggers is not None:
            await self.triggers.stop(drain=True, timeout=timeout)
        if self._catalog is not None:
            self._catalog.close()
        if self.feed is not None:
            await self.feed.stop(min(timeout, 5.0))
        released = await self.worker.stop(timeout)
        if released:
            log.info("shutdown: %d deliveries handed back unsent (still pending)", released)
        self.queue.close()
        self.store.close()

    # ---- endpoints -------------------------------------------------------------------------

    def _sync_config_endpoints(self) -> None:
        ev = self.settings.events
        endpoints = from_settings(ev) if ev.enabled else []
        self.queue.sync_config_endpoints(endpoints)
        self._refresh_router()

    def _refresh_router(self) -> None:
        self.router.update(self.queue.endpoints())

    async def endpoints_changed(self) -> None:
        """After an API change: route new events accordingly and let the worker see it."""
        await asyncio.to_thread(self._refresh_router)
        await self.worker.reload()

    async def reload_config(self) -> bool:
        """Re-read the config file (SIGHUP or a change on disk); queued deliveries stay queued.

        Returns False (and keeps the running settings) when the new file is invalid.
        """
        try:
            settings = await asyncio.to_thread(load, self.config_path)
        except Exception as exc:
            log.error("config reload refused, keeping the running settings: %s", exc)
            return False
        if settings.store.url != self.settings.store.url:
            log.warning("config reload: store.url changed; restart tidings to switch stores")
        if settings.events.source != self.settings.events.source:
            log.warning("config reload: events.source changed; restart tidings to switch it")
        self.settings = settings
        await asyncio.to_thread(self._sync_config_endpoints)
        await self.worker.reload()
        log.info("config reloaded from %s", self.config_path)
        return True

    def _deliveries_made(self) -> None:
        """A feed committed new deliveries (from any thread): claim them now."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.worker.wake)

    async def watch_config(self, interval: float = 2.0) -> None:
        """Reload when the config file changes on disk."""
        while self.config_path is not None:
            await asyncio.sleep(interval)
            mtime = _mtime(self.config_path)
            if mtime is not None and mtime != self._config_mtime:
                self._config_mtime = mtime
                await self.reload_config()

    # ---- accepting -------------------------------------------------------------------------

    def accept(self, events: Sequence[Event]) -> Accepted:
        """Store ``events`` and their deliveries in one transaction (all left to a claim)."""
        return self._accept(events, None)[0]

    def _accept(
        self, events: Sequence[Event], take: dict[str, int] | None
    ) -> tuple[Accepted, list[Claimed]]:
        """The ``queue_size`` bound needs the number of open deliveries. Counting them costs up
        to ``queue_size`` rows, so far from the bound a guess (counted at most every 0.25 s,
        plus what was accepted since) stands in; near it every accept counts exactly.
        """
        max_pending = self.settings.events.queue_size
        now = time.monotonic()
        if now - self._open_counted_at > 0.25:
            self._open_guess = self.queue.count_open(max_pending + 1)
            self._open_counted_at = now
        most = len(events) * self.router.enabled
        exact = self._open_guess + most > 0.8 * max_pending
        try:
            done, claimed = self.queue.accept_and_claim(
                events,
                self.router,
                max_pending=max_pending if exact else None,
                take=take,
                lease=self.worker.lease,
            )
        except WebhookQueueFull as exc:  # name the bound as the config does
            raise WebhookQueueFull(
                exc.pending, exc.max_pending, exc.adding, setting="events.queue_size"
            ) from None
        self._open_guess += sum(len(ids) for _, ids in done)
        accepted = Accepted(
            ids=[rec.event.id for rec, _ in done],
            positions=[rec.position for rec, _ in done],
            deliveries=sum(len(ids) for _, ids in done),
        )
        return accepted, claimed

    async def aaccept(self, events: Sequence[Event]) -> Accepted:
        """Accept, leasing what the worker has room for to it directly (no claim round trip)."""
        reserved = self.worker.reserve()
        try:
            accepted, claimed = await asyncio.to_thread(self._accept, events, reserved)
        except BaseException:
            self.worker.unreserve(reserved)
            raise
        self.worker.adopt(reserved, claimed)
        self.accepted_count += len(accepted.ids)
        if accepted.deliveries > len(claimed):
            self.worker.wake()
        return accepted

    # ---- replay ----------------------------------------------------------------------------

    def replay(self, criteria: Criteria, *, dry_run: bool = False) -> Replay:
        """New deliveries for stored events matching ``criteria``, all or none.

        A replay may fill the queue to ``replay_bound(events.queue_size)``, leaving the rest to
        live events. An HTTP request cannot wait for the queue to drain, so a replay that does
        not fit now is refused whole (``WebhookQueueFull``); ``tidings replay`` waits for room
        instead.
        """
        plan = self.queue.plan_redeliver(criteria, self.router)
        total = sum(plan.values())
        if dry_run or not total:
            return Replay(total, plan, dry_run)
        size = self.settings.events.queue_size
        bound = replay_bound(size)
        open_now = self.queue.count_open(bound + 1)
        room = max(0, bound - open_now)
        if total > room:
            raise WebhookQueueFull(
                open_now,
                bound,
                total,
                message=(
                    f"replay refused: it would create {total} deliveries and the webhook queue "
                    f"has room for {room} ({open_now} deliveries open; a replay may fill "
                    f"{bound} of events.queue_size={size}, the rest is kept for live events); "
                    "nothing was written. Narrow it (since, until, types), raise "
                    "events.queue_size, or run `tidings replay`, which waits for room"
                ),
            )
        created = self.queue.redeliver(criteria, self.router)
        return Replay(created, plan, False)

    # ---- health ----------------------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, report): a stalled worker or an unreachable store is unhealthy; a queue
        filled to ``DEGRADED_AT`` of its bound is degraded (still healthy: it serves, but live
        events are about to be refused). ``report["reasons"]`` says why it is not ok."""
        report: dict[str, Any] = {"store": {"url": redact_url(self.settings.store.url)}}
        reasons: list[str] = []
        healthy = True
        degraded = False
        size = self.settings.events.queue_size
        try:
            stats: QueueStats = await asyncio.wait_for(self.queue.astats(), 5.0)
            report["store"]["reachable"] = True
            report["queue"] = {
                "pending": stats.pending,
                "delivering": stats.delivering,
                "dead": stats.dead,
                "delivered": stats.delivered,
                "oldest_pending_age": stats.oldest_pending_age,
                "capacity": size,
            }
            open_now = stats.pending + stats.delivering
            if open_now >= DEGRADED_AT * size:
                degraded = True
                how = "full" if open_now >= size else f"{open_now / size:.0%} full"
                reasons.append(
                    f"webhook queue {how}: {open_now} deliveries pending or in flight of "
                    f"events.queue_size={size}; POST /events answers 503 while it is full. "
                    "Look for failing endpoints (GET /deliveries?state=pending) or raise "
                    "events.queue_size"
                )
        except Exception as exc:
            healthy = False
            report["store"]["reachable"] = False
            report["store"]["error"] = str(exc)
            reasons.append(f"the store is not reachable: {exc}")
        beat_age = time.monotonic() - self.worker.last_beat
        alive = beat_age < STALLED_AFTER
        if not alive:
            healthy = False
            reasons.append(f"the delivery worker has not looked for work for {beat_age:.0f}s")
        report["workers"] = {
            "alive": alive,
            "last_heartbeat_age": round(beat_age, 3),
            "in_flight": self.worker.in_flight,
            "claimed": self.worker.claimed,
            "concurrency": self.worker.concurrency,
        }
        if self.feed is not None:
            report["source"] = self.feed.health()
            if not report["source"]["ok"]:
                healthy = False
                reasons.append("the event source is not running: see source")
        report["status"] = "unhealthy" if not healthy else "degraded" if degraded else "ok"
        report["reasons"] = reasons
        report["uptime"] = round(time.time() - self.started_at, 1)
        return healthy, report


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return path.stat().st_mtime
    except OSError:
        return None
