"""The worker pool of ``Bus(mode="async")``: threads with bounded queues, one per key hash.

An event goes to the worker chosen by its key (aggregate id, else subject), so events of one
key are handled in publish order while different keys run in parallel; events without a key
are spread round-robin. While a retry of a key is in flight, later events of that key are
parked, so order per key holds across retries too. A full queue applies ``when_full``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from tidings.bus.reports import BusClosed, BusQueueFull, BusStats, CloseReport
from tidings.bus.retries import Requeue
from tidings.bus.subscription import Subscription
from tidings.delivery import HandlerDelivery
from tidings.event import Event, _current

__all__ = ["Worker", "WorkerPool"]

log = logging.getLogger("tidings.bus")

WhenFull = Literal["block", "drop", "raise"]
# (event, its subscriptions, its tracked deliveries or None); a retry is (None, delivery, None).
_Item = tuple[Event | None, Any, Any]
# What a worker asks of the bus: run one attempt of a delivery (the delay before the next, or
# None when finished), record a failed first attempt (the delivery and the delay, None = dead),
# and schedule a retry after a delay (put back on this worker's queue when due).
Attempt = Callable[[HandlerDelivery], float | None]
Failed = Callable[[Subscription, Event, Exception], tuple[HandlerDelivery, float | None]]
RetryLater = Callable[[HandlerDelivery, float, Requeue | None], None]
NewDeliveries = Callable[[Event, tuple[Subscription, ...]], list[HandlerDelivery]]


class Worker:
    """One async-mode worker thread and its bounded queue."""

    def __init__(
        self, index: int, capacity: int, attempt: Attempt, failed: Failed, retry_later: RetryLater
    ) -> None:
        self.capacity = capacity
        self.attempt = attempt
        self.failed = failed
        self.retry_later = retry_later
        self.q: deque[_Item] = deque()
        self.cond = threading.Condition()
        self.space = threading.Condition()
        self.space_waiters = 0
        self.idle = False
        self.busy = False
        self.stopping = False
        # Keys with a retry in flight: later events of that key wait here, in order.
        self.parked: dict[str, deque[_Item]] = {}
        self.retrying: dict[str, int] = {}
        self.thread = threading.Thread(target=self.run, name=f"tidings-worker-{index}", daemon=True)

    def push(self, item: _Item, front: bool = False) -> None:
        if front:
            self.q.appendleft(item)
        else:
            self.q.append(item)
        if self.idle:
            with self.cond:
                # Clear the flag here so only the first push wakes a sleeping worker.
                self.idle = False
                self.cond.notify()

    def push_retry(self, delivery: HandlerDelivery) -> None:
        """A due retry goes first: events of its key are parked behind it anyway."""
        self.push((None, delivery, None), front=True)

    def is_drained(self) -> bool:
        # Order matters: the worker marks itself busy before it pops, so "queue empty, then
        # not busy" proves it holds nothing.
        return not self.q and not self.busy and not self.parked

    def run(self) -> None:
        q = self.q
        while not self.stopping:
            self.busy = True
            try:
                event, payload, deliveries = q.popleft()
            except IndexError:
                self.busy = False
                with self.cond:
                    while not q and not self.stopping:
                        self.idle = True
                        self.cond.wait(0.5)
                    self.idle = False
                continue
            if self.space_waiters:
                with self.space:
                    self.space.notify()
            try:
                if event is None:
                    self.run_retry(payload)
                else:
                    self.run_event(event, payload, deliveries)
            except Exception:  # a bug in tidings itself must not kill the worker
                log.exception("tidings worker failed; the event is recorded as failed")
            finally:
                self.busy = False

    def run_event(self, event: Event, subs: tuple[Subscription, ...], deliveries: Any) -> None:
        key = event.key
        if key is not None and key in self.parked:
            self.parked[key].append((event, subs, deliveries))
            return
        if deliveries is not None:
            for delivery in deliveries:
                delay = self.attempt(delivery)
                if delay is not None:
                    self.hold(key)
                    self.retry_later(delivery, delay, self.push_retry)
            return
        token = _current.set(event)
        try:
            for sub in subs:
                try:
                    sub.call(event)
                except Exception as exc:
                    delivery, delay = self.failed(sub, event, exc)
                    if delay is not None:
                        self.hold(key)
                        self.retry_later(delivery, delay, self.push_retry)
                else:
                    sub.handled += 1
        finally:
            _current.reset(token)

    def hold(self, key: str | None) -> None:
        if key is not None:
            self.parked.setdefault(key, deque())
            self.retrying[key] = self.retrying.get(key, 0) + 1

    def run_retry(self, delivery: HandlerDelivery) -> None:
        delay = self.attempt(delivery)
        if delay is not None:
            self.retry_later(delivery, delay, self.push_retry)
            return
        key = delivery.event.key
        if key is None or key not in self.retrying:
            return
        left = self.retrying[key] - 1
        if left:
            self.retrying[key] = left
            return
        del self.retrying[key]
        parked = self.parked.pop(key, None)
        if parked:
            self.q.extendleft(reversed(parked))


class WorkerPool:
    """``count`` workers sharing ``buffer_size`` (split evenly) and one ``when_full`` policy.

    ``new_deliveries`` (``track_deliveries=True``) makes the tracked deliveries of an event
    once it has a place in a queue. Full-queue outcomes are counted in ``stats`` under
    ``lock`` (the bus's).
    """

    def __init__(
        self,
        count: int,
        buffer_size: int,
        when_full: WhenFull,
        stats: BusStats,
        lock: threading.Lock,
        *,
        attempt: Attempt,
        failed: Failed,
        retry_later: RetryLater,
        new_deliveries: NewDeliveries | None,
    ) -> None:
        per_worker = -(-buffer_size // count)
        self.when_full = when_full
        self.stats = stats
        self._lock = lock
        self._new_deliveries = new_deliveries
        self._rr = itertools.count()
        self.workers = [Worker(i, per_worker, attempt, failed, retry_later) for i in range(count)]
        for w in self.workers:
            w.thread.start()

    def worker_for(self, key: str | None) -> Worker:
        workers = self.workers
        if key is None:
            return workers[next(self._rr) % len(workers)]
        return workers[hash(key) % len(workers)]

    def enqueue(self, event: Event, subs: tuple[Subscription, ...], wait: bool = True) -> bool:
        """Queue ``event`` for the worker of its key. False: no room and ``wait`` is False
        (``apublish`` waits and tries again); a dropped event counts as queued."""
        workers = self.workers
        key = event.key
        if key is None:
            worker = workers[next(self._rr) % len(workers)]
        else:
            worker = workers[hash(key) % len(workers)]
        if len(worker.q) >= worker.capacity and not self._make_room(worker, event, wait):
            # Dropped (handled, counted) or, for apublish, "wait and try again".
            return self.when_full == "drop"
        make = self._new_deliveries
        worker.push((event, subs, make(event, subs) if make is not None else None))
        return True

    def _make_room(self, worker: Worker, event: Event, wait: bool) -> bool:
        if self.when_full == "drop":
            with self._lock:
                self.stats.dropped += 1
            log.warning("queue full: dropped event %s (%s)", event.id, event.type)
            return False
        if self.when_full == "raise":
            with self._lock:
                self.stats.rejected += 1
            raise BusQueueFull(
                f"the worker queue for event {event.id} is full ({worker.capacity} waiting); "
                "raise buffer_size, add workers, or choose when_full='block'"
            )
        if not wait:
            return False
        with self._lock:
            self.stats.blocked += 1
        with worker.space:
            worker.space_waiters += 1
            try:
                while len(worker.q) >= worker.capacity and not worker.stopping:
                    worker.space.wait(0.05)
            finally:
                worker.space_waiters -= 1
        if worker.stopping:
            raise BusClosed("the bus closed while waiting for queue space")
        return True

    def is_drained(self) -> bool:
        return all(w.is_drained() for w in self.workers)

    @property
    def depth(self) -> int:
        """Events waiting in the queues, parked ones included."""
        depth = 0
        for w in self.workers:
            depth += len(w.q) + sum(len(p) for p in list(w.parked.values()))
        return depth

    @property
    def capacity(self) -> int:
        return sum(w.capacity for w in self.workers)

    def stop(self, deadline: float, report: CloseReport) -> int:
        """Stop the workers, waiting for each until ``deadline`` (``time.monotonic``, at least
        0.1 s each); add what
        they leave to ``report`` and return how many are still inside a handler."""
        for w in self.workers:
            w.stopping = True
            with w.cond:
                w.cond.notify()
            with w.space:
                w.space.notify_all()
        running = 0
        for w in self.workers:
            w.thread.join(max(deadline - time.monotonic(), 0.1))
            if w.thread.is_alive():
                running += 1  # a handler still running past the deadline
            for event, payload, _ in list(w.q):
                if event is not None:
                    report.unfinished_events.append(event)
                else:
                    report.pending_retries.append(payload)
            for parked in w.parked.values():
                report.unfinished_events.extend(e for e, _, _ in parked if e is not None)
        return running
