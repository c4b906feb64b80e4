"""The processor: the store's events in, the matched actions out as jobs on the queue.

For each partition it owns, the processor follows the store's live subscription (catch-up from
the partition's named checkpoint, then LISTEN on PostgreSQL or polling on SQLite). Per page of
events, in the subscription's thread:

1. each chain event goes through ``ChainTracker.observe``; a reorg is recovered at once
   (``ChainTracker.recover``: invalidate, cancel, invalidate results, compensate, ``chain.reorg``)
   after the jobs of the events before it are enqueued, and processing goes on with the event
   that showed it, the first of the new branch;
2. ``match_events`` evaluates the page against the trigger index of the moment
   (``index_source()``, called once per page);
3. the jobs are enqueued (keys ``event:trigger:index``: an event seen again enqueues nothing)
   and each condition that raised is recorded as that trigger's failed result;
4. only then does the subscription move the partition's checkpoint.

Where a partition whose checkpoint was never moved starts: the group's start (``start``:
``"end"`` the store's head, ``"beginning"`` 0), recorded once when the group first ever ran
(``tidings.triggers.starts``), so a new partition count re-reads from there and skips nothing.

A crash between 3 and 4 hands the page over again after a restart: at-least-once, and the job
keys make it exactly-once in effect. The store's-database queue and the results are written
from the subscription thread itself; a Redis queue and a reorg's recovery are coroutines of the
loop ``start`` ran on (a Redis client belongs to its loop), handed over with
``run_coroutine_threadsafe`` while the thread waits, so pages stay in order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from tidings.event import Event
from tidings.retry import RetryPolicy
from tidings.store.base import Criteria, Recorded
from tidings.store.chain import EXTENSION_OF
from tidings.triggers.chains import ChainTracker, ReorgReport
from tidings.triggers.index import TriggerIndex
from tidings.triggers.jobs.model import Job, JobQueue
from tidings.triggers.matching import Matched, match_events
from tidings.triggers.results import ActionResult, ActionResults
from tidings.triggers.starts import START_CHOICES, GroupStarts, Start

__all__ = ["CONDITION_FAILED", "DEFAULT_NAME", "Processor", "partition_for"]

log = logging.getLogger("tidings.triggers.processor")

T = TypeVar("T")

DEFAULT_NAME = "tidings-triggers"
#: The action type of the result recorded when a trigger's condition raised on an event.
CONDITION_FAILED = "condition"
#: The store's database failing under a page: retry for minutes rather than halt.
PAGE_RETRY = RetryPolicy(max_retries=12, initial_delay=0.2, max_delay=15.0)
RESTART_DELAY = (0.5, 30.0)  # a halted partition subscription is started again: first, most


def partition_for(event: Event, partition_by: str, partitions: int) -> int:
    """The partition of ``event``: ``crc32(key) % partitions`` of the ``partition_by``
    extension (``chain_id`` reads ``chainid``); an event without the key is partition 0."""
    if partitions <= 1:
        return 0
    value = (event.extensions or {}).get(EXTENSION_OF.get(partition_by, partition_by))
    if value is None:
        return 0
    return zlib.crc32(str(value).encode()) % partitions


class _Partition:
    """One owned partition: its subscription and its chain tracker."""

    def __init__(self, number: int, name: str) -> None:
        self.number = number
        self.name = name
        self.sub: Any = None
        self.tracker: ChainTracker | None = None
        self.restart_at = 0.0
        self.restart_delay = RESTART_DELAY[0]


class Processor:
    """Triggers over the store's events; see the module docstring.

    ``index_source`` gives the trigger index to use (called once per page: make it cheap, a
    cached value); ``partitions``/``partition_by`` split the stream (``own`` says which
    partitions this processor runs; ``start`` without ``own`` runs them all).
    ``publish`` appends the ``chain.reorg`` event (default: to the store). ``on_jobs`` is
    called (from the subscription thread) after a page enqueued new jobs.

    ``start`` is where the group begins the first time it ever runs: ``"beginning"`` (0, the
    default here, so a library caller sees every stored event) or ``"end"`` (the store's head:
    only new events; TriggerService passes ``processor.start``, default ``end``).
    """

    def __init__(
        self,
        store: Any,
        queue: JobQueue,
        results: ActionResults,
        *,
        index_source: Callable[[], TriggerIndex],
        partitions: int = 1,
        partition_by: str = "chain_id",
        name: str = DEFAULT_NAME,
        publish: Callable[[Event], Awaitable[Any] | Any] | None = None,
        on_jobs: Callable[[], None] | None = None,
        page_size: int = 500,
        poll_interval: float | None = None,
        start: Start = "beginning",
    ) -> None:
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"Processor(partitions=): expected an int >= 1, got {partitions!r}")
        if start not in START_CHOICES:
            raise ValueError(f"Processor(start=): expected 'end' or 'beginning', got {start!r}")
        self.start_at: Start = start
        self.group_start: int | None = None  # recorded on the first own()
        self.store = store
        self.queue = queue
        self.results = results
        self.index_source = index_source
        self.partitions = partitions
        self.partition_by = partition_by
        self.name = name
        self.page_size = page_size
        self.poll_interval = poll_interval
        self._publish = publish
        self._on_jobs = on_jobs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owned: dict[int, _Partition] = {}
        self._lock = threading.Lock()  # counts, written from several subscription threads
        self.counts: Counter[str] = Counter()  # events, matches, jobs, new_jobs, failures, ...
        self.reorgs: list[ReorgReport] = []
        self.last_page_at: float | None = None

    # ------------------------------------------------------------------ names and partitions

    def checkpoint_name(self, partition: int) -> str:
        """The store checkpoint of one partition: the name alone when there is one partition,
        ``name:p3of8`` otherwise (a new partition count starts new checkpoints)."""
        if self.partitions == 1:
            return self.name
        return f"{self.name}:p{partition}of{self.partitions}"

    def partition_of(self, event: Event) -> int:
        return partition_for(event, self.partition_by, self.partitions)

    @property
    def owned(self) -> list[int]:
        return sorted(self._owned)

    def positions(self) -> dict[int, int]:
        """The position each owned partition has handled (its checkpoint, give or take the
        last half second)."""
        return {n: (p.sub.position if p.sub is not None else 0) for n, p in self._owned.items()}

    # ------------------------------------------------------------------ lifecycle

    async def start(self, partitions: Iterable[int] | None = None) -> None:
        """Follow the store for ``partitions`` (default: all of them)."""
        self._loop = asyncio.get_running_loop()
        wanted = range(self.partitions) if partitions is None else partitions
        await self.own(set(wanted))

    async def own(self, partitions: set[int]) -> None:
        """Run exactly ``partitions``: start the new ones, stop (finishing their page) the
        ones no longer given. A partition stopped here has saved its checkpoint."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        bad = sorted(p for p in partitions if not 0 <= p < self.partitions)
        if bad:
            raise ValueError(f"Processor.own: partitions {bad} outside 0..{self.partitions - 1}")
        for number in sorted(set(self._owned) - partitions):
            part = self._owned.pop(number)
            await asyncio.to_thread(self._stop_partition, part, 5.0)
            log.info("processor %s: partition %d released", self.name, number)
        if partitions - set(self._owned) and self.group_start is None:
            self.group_start = await asyncio.to_thread(self._record_start)
            log.info("processor %s: group starts after position %d", self.name, self.group_start)
        for number in sorted(partitions - set(self._owned)):
            part = _Partition(number, self.checkpoint_name(number))
            await asyncio.to_thread(self._start_partition, part)
            self._owned[number] = part
            log.info("processor %s: partition %d from position %d", self.name, number,
                     part.sub.position)  # fmt: skip

    def _record_start(self) -> int:
        """The group's start: recorded now unless it ran before (then its first one)."""
        position = int(self.store.head()) if self.start_at == "end" else 0
        return GroupStarts(self.results.database).record(self.name, position)

    def _start_partition(self, part: _Partition) -> None:
        # A checkpoint still at 0 has handled nothing: it begins at the group's start.
        if self.group_start and self.store.checkpoint(part.name) == 0:
            self.store.reset_subscription(part.name, self.group_start)
        if part.tracker is None:
            part.tracker = ChainTracker(self.store)
        part.sub = self.store.subscribe(
            Criteria(),
            lambda page: self._on_page(page, part),
            name=part.name,
            batch=True,
            retry=PAGE_RETRY,
            poll_interval=self.poll_interval,
            page_size=self.page_size,
        )

    def _stop_partition(self, part: _Partition, timeout: float) -> None:
        if part.sub is not None:
            part.sub.stop(timeout)
        if part.tracker is not None:
            part.tracker.close()
            part.tracker = None

    async def stop(self, timeout: float = 5.0) -> None:
        """Finish the pages in hand (their jobs enqueued, checkpoints saved) and stop."""
        parts, self._owned = list(self._owned.values()), {}
        await asyncio.gather(*(asyncio.to_thread(self._stop_partition, p, timeout)
                               for p in parts))  # fmt: skip

    async def watch(self) -> None:
        """Start again a partition whose subscription halted (the database was gone for
        longer than the page retries); call it every second or so."""
        now = time.monotonic()
        for part in list(self._owned.values()):
            sub = part.sub
            if sub is None or sub.running or now < part.restart_at:
                continue
            log.error("processor %s: partition %d stopped at position %d (%s); starting again",
                      self.name, part.number, sub.position, sub.error)  # fmt: skip
            part.restart_at = now + part.restart_delay
            part.restart_delay = min(part.restart_delay * 2, RESTART_DELAY[1])
            try:
                await asyncio.to_thread(self._start_partition, part)
                part.restart_delay = RESTART_DELAY[0]
            except Exception as exc:
                log.error("processor %s: cannot follow the store yet: %s", self.name, exc)

    def health(self) -> dict[str, Any]:
        subs = {n: p.sub for n, p in self._owned.items()}
        errors = {n: str(s.error) for n, s in subs.items() if s is not None and s.error}
        return {
            "ok": all(s is not None and s.running for s in subs.values()),
            "partitions": self.partitions,
            "owned": self.owned,
            "positions": self.positions(),
            "errors": errors,
            "counts": dict(self.counts),
            "reorgs": len(self.reorgs),
        }

    # ------------------------------------------------------------------ one page

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the processor's loop and wait for it (from a subscription thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise RuntimeError("the processor's event loop is gone; start() it again")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def _on_page(self, page: list[Recorded], part: _Partition) -> None:
        """The subscription's handler: raising leaves the checkpoint before the page (the
        subscription retries it, then halts and ``watch`` starts it again)."""
        index = self.index_source()
        tracker = part.tracker
        assert tracker is not None
        mine = page
        if self.partitions > 1:
            mine = [r for r in page if self.partition_of(r.event) == part.number]
        segment: list[Recorded] = []
        for rec in mine:
            ext = rec.event.extensions
            if not ext or "chainid" not in ext or not ("blockhash" in ext or "parenthash" in ext):
                segment.append(rec)  # no block hashes: nothing to compare, no checkpoint
                continue
            reorg = tracker.observe(rec)
            if reorg is not None:
                self._commit(segment, index, part)  # the old branch's jobs first: cancelled next
                segment = []
                report = self._run(
                    tracker.recover(
                        reorg,
                        queue=self.queue,
                        results=self.results,
                        triggers=self.index_source,
                        publish=self._publish if self._publish is not None else self._append,
                        make_job=Job,
                    )
                )
                with self._lock:
                    self.reorgs.append(report)
                    self.counts["reorgs"] += 1
            tracker.advance_to(rec)
            segment.append(rec)
        self._commit(segment, index, part)
        with self._lock:
            self.counts["pages"] += 1
            self.counts["seen"] += len(page)
        self.last_page_at = time.time()

    def _append(self, event: Event) -> None:
        self.store.append(event)

    def _commit(self, segment: list[Recorded], index: TriggerIndex, part: _Partition) -> None:
        if not segment:
            return
        partition_of: dict[str, str | None] | None = None
        if self.partitions > 1:
            label = str(part.number)
            partition_of = {rec.event.id: label for rec in segment}
        matched = match_events(index, segment, partition_of=partition_of)
        new = self._write(matched) if matched.jobs or matched.failures else 0
        with self._lock:
            self.counts["events"] += matched.events
            self.counts["matches"] += matched.matches
            self.counts["jobs"] += len(matched.jobs)
            self.counts["new_jobs"] += new
            self.counts["failures"] += len(matched.failures)
        if new and self._on_jobs is not None:
            self._on_jobs()

    def _write(self, matched: Matched) -> int:
        """Enqueue the jobs, then record the failed conditions. A queue with ``enqueue_sync``
        (the store's database) is written from this thread; another (Redis) on the loop."""
        enqueue_sync = getattr(self.queue, "enqueue_sync", None)
        if enqueue_sync is not None:
            new = int(enqueue_sync(matched.jobs)) if matched.jobs else 0
        else:
            new = int(self._run(self.queue.enqueue(matched.jobs))) if matched.jobs else 0
        if matched.failures:
            self.results.record_sync(_failure_rows(matched))
            for f in matched.failures[:5]:
                log.warning("trigger %s: condition raised on event %s (%s): %s", f.trigger.id,
                            f.recorded.event.id, f.recorded.event.type, f.error)  # fmt: skip
        return new


def _failure_rows(matched: Matched) -> list[ActionResult]:
    """A failed result per condition that raised: the error names the trigger and why."""
    return [
        ActionResult(
            key=f"{f.recorded.event.id}:{f.trigger.id}:{CONDITION_FAILED}",
            event_id=f.recorded.event.id,
            trigger_id=f.trigger.id,
            action_index=-1,
            action_type=CONDITION_FAILED,
            status="failed",
            error=f"trigger {f.trigger.id!r}: condition raised: {f.error}",
        )
        for f in matched.failures
    ]
