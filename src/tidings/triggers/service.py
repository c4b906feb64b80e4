"""TriggerService: the processor and the action workers of one process, wired from settings.

``tidings serve`` starts one when ``triggers`` are configured, ``tidings process`` runs one
alone; both call ``TriggerService.from_settings(settings, store)``, ``start()`` and
``stop()``. The job queue is ``processor.queue`` (the store's database, or Redis), the results
and chain checkpoints live in the store's database. With ``processor.partitions`` above 1 on
PostgreSQL, the partitions are shared with the other processes of the group by leases
(``tidings.triggers.partitions``); otherwise this process runs them all. See
docs/processing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, cast

from tidings.config import Settings
from tidings.event import Event
from tidings.triggers.actions.registry import action_types, validate_action
from tidings.triggers.definitions import Trigger, parse_triggers
from tidings.triggers.index import TriggerIndex
from tidings.triggers.jobs import JobQueue, open_job_queue
from tidings.triggers.partitions import PartitionLeases
from tidings.triggers.processor import DEFAULT_NAME, Processor
from tidings.triggers.results import ActionResults
from tidings.triggers.starts import Start
from tidings.triggers.workers import ActionWorkers, context_factory

__all__ = ["TriggerService", "load_triggers"]

log = logging.getLogger("tidings.triggers.service")

LEASE_TTL = 10.0  # seconds a partition lease lives without renewal
WATCH_EVERY = 1.0  # seconds between looks at halted subscriptions


def load_triggers(settings: Settings) -> list[Trigger]:
    """``settings.triggers`` parsed, with the action types and options checked; raises
    ``TriggerError`` naming the bad field's path (``triggers[2].actions[0].type``)."""
    return parse_triggers(
        settings.triggers, action_types=action_types(), validate_action=validate_action
    )


def _uses_webhooks(index: TriggerIndex) -> bool:
    return any(
        spec.type == "webhook"
        for trigger in index
        for spec in (*trigger.actions, *((trigger.compensation,) if trigger.compensation else ()))
    )


class TriggerService:
    """The processor, the workers and, when shared, the partition leases of this process."""

    def __init__(
        self,
        store: Any,
        queue: JobQueue,
        results: ActionResults,
        workers: ActionWorkers,
        processor: Processor,
        *,
        leases: PartitionLeases | None = None,
        closers: tuple[Callable[[], Any], ...] = (),
    ) -> None:
        self.store = store
        self.queue = queue
        self.results = results
        self.workers = workers
        self.processor = processor
        self.leases = leases
        self._closers = closers
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: Any,
        *,
        index_source: Callable[[], TriggerIndex] | None = None,
        delivery_queue: Any = None,
        name: str = DEFAULT_NAME,
        poll_interval: float | None = None,
        action_timeout: float = 30.0,
    ) -> TriggerService:
        """Build everything from ``settings`` over ``store`` (its URL is the database of the
        queue and results). ``index_source`` replaces the fixed index of ``settings.triggers``
        (saved triggers); ``delivery_queue`` is the webhook ``DeliveryQueue`` to hand webhook
        actions to (default: one on ``store``, made when a trigger has a webhook action)."""
        if index_source is None:
            index = TriggerIndex(load_triggers(settings))

            def fixed() -> TriggerIndex:
                return index

            index_source = fixed
        proc = settings.processor
        url = settings.store.url
        queue = open_job_queue(proc.queue, url)
        results = ActionResults(url)
        closers: list[Callable[[], Any]] = []
        webhooks = None
        if delivery_queue is None and _uses_webhooks(index_source()):
            from tidings.webhooks.queue import DeliveryQueue  # noqa: PLC0415

            delivery_queue = DeliveryQueue(store)
            closers.append(delivery_queue.close)
        if delivery_queue is not None:
            from tidings.triggers.actions.webhook import DurableWebhooks  # noqa: PLC0415

            webhooks = DurableWebhooks(delivery_queue)

        async def publish(event: Event) -> Any:
            return await asyncio.to_thread(store.append, event)

        workers = ActionWorkers(
            queue,
            results,
            retry=proc.retry.policy(),
            concurrency=proc.workers,
            timeout=action_timeout,
            lease_seconds=2 * action_timeout,
            context_factory=context_factory(publish=publish, webhooks=webhooks),
        )
        processor = Processor(
            store,
            queue,
            results,
            index_source=index_source,
            partitions=proc.partitions,
            partition_by=proc.partition_by,
            name=name,
            poll_interval=poll_interval,
            start=cast("Start", proc.start),  # checked by the config: end | beginning
        )
        leases = None
        if proc.partitions > 1 and url.startswith(("postgresql:", "postgres:")):
            leases = PartitionLeases(url, name, proc.partitions, ttl=LEASE_TTL)
            closers.append(leases.close)
        return cls(store, queue, results, workers, processor, leases=leases, closers=tuple(closers))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the workers, then the processor (all partitions, or this member's share)."""
        self._tasks.append(asyncio.create_task(self.workers.run_until_stopped()))
        if self.leases is None:
            await self.processor.start()
        else:
            await self.processor.start(partitions=())
            await self._beat()
        self._tasks.append(asyncio.create_task(self._watch()))
        self.started = True
        log.info("triggers: processing %d trigger(s), partitions %s of %d, %d workers",
                 len(self.processor.index_source()), self.processor.owned,
                 self.processor.partitions, self.workers.concurrency)  # fmt: skip

    async def _beat(self) -> None:
        assert self.leases is not None
        beat = await asyncio.to_thread(self.leases.beat)
        await self.processor.own(set(beat.keep))  # stops the surplus: checkpoints saved
        if beat.surplus:
            await asyncio.to_thread(self.leases.release, beat.surplus)

    async def _watch(self) -> None:
        """Restart halted partitions; heartbeat the leases every third of their lifetime."""
        next_beat = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCH_EVERY if self.leases is None else
                                min(WATCH_EVERY, LEASE_TTL / 3))  # fmt: skip
            try:
                await self.processor.watch()
                if self.leases is not None and loop.time() >= next_beat:
                    await self._beat()
                    next_beat = loop.time() + LEASE_TTL / 3
            except Exception as exc:  # the database is away: say so, try again
                log.error("triggers: heartbeat failed (%s); trying again", exc)

    async def stop(self, drain: bool = True, timeout: float = 10.0) -> list[str]:
        """Stop the processor (its pages finish, checkpoints saved), release the leases, then
        the workers: with ``drain`` the jobs in flight finish within ``timeout``, else they
        are handed back at once. Returns the keys of the jobs handed back."""
        for task in self._tasks[1:]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.processor.stop(min(timeout, 5.0))
        if self.leases is not None:
            try:
                await asyncio.to_thread(self.leases.leave)
            except Exception as exc:
                log.error("triggers: could not release the partition leases (%s); they run "
                          "out in %.0fs", exc, LEASE_TTL)  # fmt: skip
        self.workers.drain_timeout = timeout if drain else 0.0
        unfinished = await self.workers.stop()
        if self._tasks:
            with contextlib.suppress(Exception):
                await self._tasks[0]
        self._tasks = []
        await self.queue.close()
        await self.results.close()
        for close in self._closers:
            with contextlib.suppress(Exception):
                close()
        self.started = False
        return unfinished

    # ------------------------------------------------------------------ figures

    async def figures(self) -> dict[str, Any]:
        """What metrics and the API show: processor counts, queue depth, results by status,
        chain checkpoints, owned partitions."""
        depth = await self.queue.depth()
        results = await self.results.counts()
        checkpoints = []
        tracker = None
        with contextlib.suppress(Exception):
            from tidings.triggers.chains import ChainTracker  # noqa: PLC0415

            tracker = await asyncio.to_thread(ChainTracker, self.store)
            checkpoints = [
                {"chain_id": c.chain_id, "block_number": c.block_number,
                 "block_hash": c.block_hash}
                for c in await asyncio.to_thread(tracker.checkpoints)
            ]  # fmt: skip
        if tracker is not None:
            tracker.close()
        return {
            "processor": self.processor.health(),
            "workers": dict(self.workers.counts),
            "in_flight": self.workers.in_flight,
            "queue_depth": depth,
            "results": results,
            "checkpoints": checkpoints,
        }

    def health(self) -> dict[str, Any]:
        return {"started": self.started, **self.processor.health()}
