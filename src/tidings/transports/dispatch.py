"""Dispatcher: the consumer semantics every transport shares.

A backend fetches messages and hands each one to ``Dispatcher.submit`` as an ``Inbound``. The
dispatcher keeps at most ``max_in_flight`` messages in progress, runs messages of one key one
after another (in the order submitted) while different keys run concurrently, retries a failing
handler by its RetryPolicy with an asyncio sleep that parks only that key, and when retries are
spent writes a dead message through the backend's ``dead_letter`` callable before acking. A
message is acked only after its handler succeeded or its dead letter was stored; if storing the
dead letter fails, it is nacked so the backend delivers it again. At-least-once, never lost.

How it runs (the per-message cost is what bounds every backend's throughput): a pool of worker
tasks, grown on demand up to ``max_in_flight`` and parked when idle, takes messages from one
ready queue. A keyed message whose key is already queued or running waits in that key's lane;
the worker that finishes a message of the key goes on with the next one of the lane, so a key is
held by one worker at a time and its order is kept without a task or lock per key. A sync
handler is called directly; only an awaitable result is awaited. A worker wakes (or starts)
another only when it is about to wait (on an async handler, an ack, a retry sleep) while
messages are ready, so sync handlers run back to back on one worker without a task switch per
message, and async handlers still get up to ``max_in_flight`` of them running at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tidings.event import Event
from tidings.transport import AsyncHandler, DeadMessage, Inbound, SubscribeOptions

__all__ = ["DispatchStats", "Dispatcher"]

log = logging.getLogger("tidings.transports")

DeadLetterSink = Callable[[DeadMessage], Awaitable[None]]

# A lane with exactly one message (the one queued or running) is marked by this instead of an
# empty deque: most keys never have a second message waiting, so no deque is built for them.
_ALONE: deque[Inbound] = deque(maxlen=0)


@dataclass(slots=True)
class DispatchStats:
    received: int = 0
    handled: int = 0
    failed: int = 0  # handler attempts that raised
    retried: int = 0
    dead: int = 0
    undecodable: int = 0
    ack_errors: int = 0


class Dispatcher:
    def __init__(
        self,
        name: str,
        handler: AsyncHandler,
        options: SubscribeOptions,
        dead_letter: DeadLetterSink,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.handler = handler
        self.options = options
        self.stats = DispatchStats()
        self._dead_letter = dead_letter
        self._on_error = on_error
        self._max = options.max_in_flight
        self._in_flight = 0  # taken and not yet settled (queued, waiting in a lane, or running)
        # Runnable: keyless messages and the head of each key, with the key as submitted (a
        # handler may change its event's key; the lane must still be found and freed).
        self._ready: deque[tuple[Inbound, str | None]] = deque()
        self._lanes: dict[str, deque[Inbound]] = {}  # key -> messages waiting behind the head
        self._slot_waiters: deque[asyncio.Future[None]] = deque()  # submitters, FIFO
        self._parked: list[asyncio.Future[None]] = []  # idle workers
        self._workers: set[asyncio.Task[None]] = set()
        self._active = 0  # workers running or about to run (not parked, not awaiting)
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ---- taking messages -------------------------------------------------------------------

    async def submit(self, msg: Inbound) -> None:
        """Take ``msg``; waits while ``max_in_flight`` messages are in progress (backpressure)."""
        if self._in_flight >= self._max or self._slot_waiters:
            await self._wait_for_slot()  # the slot is handed over: in_flight already counts it
        else:
            if not self._in_flight:
                self._idle.clear()
            self._in_flight += 1
        self._accept(msg)

    def try_submit(self, msg: Inbound) -> bool:
        """Take ``msg`` if a slot is free right now; False (not taken) when ``submit`` would wait.

        Lets a backend that feeds many messages in a row skip a coroutine per message.
        """
        if self._in_flight >= self._max or self._slot_waiters:
            return False
        if not self._in_flight:
            self._idle.clear()
        self._in_flight += 1
        self._accept(msg)
        return True

    async def _wait_for_slot(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot while being cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
            raise

    def _accept(self, msg: Inbound) -> None:
        self.stats.received += 1
        event = msg.event
        key = event.key if event is not None else None
        if key is not None:
            lanes = self._lanes
            lane = lanes.get(key)
            if lane is not None:  # the key is queued or running: wait behind it
                if lane is _ALONE:
                    lanes[key] = deque((msg,))
                else:
                    lane.append(msg)
                return
            lanes[key] = _ALONE
        self._ready.append((msg, key))
        if not self._active:
            self._kick()

    def _release_slot(self) -> None:
        """A message settled (or gave up its slot): hand the slot to a waiting submitter."""
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # in_flight is unchanged: the slot moves to the waiter
                return
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    # ---- workers ---------------------------------------------------------------------------

    def _kick(self) -> None:
        """Get one more worker running: an idle one if any, else a new one (<= max_in_flight)."""
        parked = self._parked
        while parked:
            waiter = parked.pop()
            if not waiter.done():
                waiter.set_result(None)
                self._active += 1
                return
        if len(self._workers) < self._max:
            self._active += 1
            task = asyncio.get_running_loop().create_task(
                self._work(), name=f"tidings-dispatch-{self.name}"
            )
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        ready = self._ready
        handler = self.handler
        stats = self.stats
        isawaitable = inspect.isawaitable
        loop = asyncio.get_running_loop()
        msg: Inbound | None = None
        key: str | None = None
        try:
            while True:
                if not ready:
                    self._active -= 1
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._parked.append(waiter)
                    await waiter  # whoever wakes us counted us active again
                    continue
                msg, key = ready.popleft()
                while msg is not None:
                    # The common case inline (a sync handler that returns): no coroutine of our
                    # own per message. Anything else goes through _run.
                    event = msg.event
                    failure: Exception | None = None
                    result: Any = None
                    if event is not None:
                        try:
                            result = handler(event)
                        except Exception as exc:
                            failure = exc
                    if (
                        event is None
                        or failure is not None
                        or (result is not None and isawaitable(result))
                    ):
                        await self._run(msg, result, failure)
                    else:
                        stats.handled += 1
                        self._active -= 1
                        if ready and not self._active:
                            self._kick()
                        try:
                            await msg.ack()
                        except Exception as exc:
                            self._settle_failed(exc)
                        finally:
                            self._active += 1
                    msg = self._done(key)  # the next of its key: it stays with this worker
        except BaseException:
            if not self._closed:
                # Not a close: a handler raised KeyboardInterrupt, SystemExit or a stray
                # CancelledError, and this worker is gone. Its message stays unsettled (the
                # backend redelivers it); free its slot and let another worker go on with its key.
                self._active -= 1
                task = asyncio.current_task()
                if task is not None:
                    self._workers.discard(task)  # now, so a replacement can start at once
                if msg is not None:
                    self._abandon(key)
            raise

    def _done(self, key: str | None) -> Inbound | None:
        """A message of ``key`` settled: free its slot; return the next one of the key, if any."""
        self._release_slot()
        if key is None:
            return None
        lanes = self._lanes
        lane = lanes.get(key)
        if lane is None or lane is _ALONE or not lane:
            lanes.pop(key, None)
            return None
        return lane.popleft()

    def _abandon(self, key: str | None) -> None:
        after = self._done(key)
        if after is not None:
            self._ready.append((after, key))  # its key goes to whichever worker is free
        if self._ready and not self._active:
            self._kick()

    async def _pause(self, awaitable: Awaitable[Any]) -> Any:
        """Await something that may suspend this worker, letting another take ready messages."""
        self._active -= 1
        if self._ready and not self._active:
            self._kick()
        try:
            return await awaitable
        finally:
            self._active += 1

    # ---- one message -----------------------------------------------------------------------

    async def _run(self, msg: Inbound, result: Any, failure: Exception | None) -> None:
        """Finish ``msg`` after its first call: ``result`` to await, or ``failure`` to retry.

        A failure of the machinery itself nacks the message instead of stalling its key.
        """
        event = msg.event
        try:
            if event is None:
                await self._undecodable(msg)
                return
            if failure is None:
                try:
                    await self._pause(result)
                except Exception as exc:
                    failure = exc
            if failure is not None:
                await self._failed(msg, event, failure)
                return
            self.stats.handled += 1
            await self._settle(msg.ack)
        except Exception as exc:
            log.exception("subscription %s: dispatch failed; nacking the message", self.name)
            self._report(exc)
            await self._settle(msg.nack)

    async def _undecodable(self, msg: Inbound) -> None:
        self.stats.undecodable += 1
        error = msg.decode_error or "the message body is not a tidings event"
        log.error("subscription %s: undecodable message dead-lettered: %s", self.name, error)
        await self._bury(msg, error, attempts=0)

    async def _failed(self, msg: Inbound, event: Event, exc: Exception) -> None:
        """The first attempt raised: retry by the policy (parking this key only), then bury."""
        policy = self.options.retry
        attempt = 1
        while True:
            self.stats.failed += 1
            self._report(exc)
            if policy.should_retry(attempt, exc):
                delay = policy.delay(attempt)
                self.stats.retried += 1
                log.warning(
                    "subscription %s: handler failed for event %s (%s), attempt %d; "
                    "retry in %.3fs: %s",
                    self.name,
                    event.id,
                    event.type,
                    attempt,
                    delay,
                    exc,
                )
                await self._pause(asyncio.sleep(delay))
                attempt += 1
                try:
                    result = self.handler(event)
                    if result is not None and inspect.isawaitable(result):
                        await self._pause(result)
                except Exception as again:
                    exc = again
                    continue
                self.stats.handled += 1
                await self._settle(msg.ack)
                return
            log.error(
                "subscription %s: handler failed for event %s (%s) after %d attempt(s), "
                "dead-lettered: %s",
                self.name,
                event.id,
                event.type,
                attempt,
                exc,
            )
            await self._bury(msg, f"{type(exc).__name__}: {exc}", attempts=attempt)
            return

    async def _bury(self, msg: Inbound, error: str, attempts: int) -> None:
        dead = DeadMessage(
            subscription=self.name,
            raw=msg.raw,
            error=error,
            attempts=attempts,
            failed_at=time.time(),
            event_id=msg.event.id if msg.event is not None else None,
            event_type=msg.event.type if msg.event is not None else None,
        )
        try:
            await self._pause(self._dead_letter(dead))
        except Exception as exc:
            # Not stored, so not acked: the backend will deliver it again.
            log.error("subscription %s: dead letter not stored (%s); nacking", self.name, exc)
            self._report(exc)
            await self._settle(msg.nack)
            return
        self.stats.dead += 1
        await self._settle(msg.ack)

    async def _settle(self, settle: Callable[[], Awaitable[None]]) -> None:
        try:
            await self._pause(settle())
        except Exception as exc:
            self._settle_failed(exc)

    def _settle_failed(self, exc: Exception) -> None:
        # The broker keeps the message and redelivers it: a duplicate, never a loss.
        self.stats.ack_errors += 1
        log.warning("subscription %s: ack/nack failed, expect a redelivery: %s", self.name, exc)
        self._report(exc)

    def _report(self, exc: BaseException) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(exc)
        except Exception:
            log.exception("subscription %s: the on_error callback raised", self.name)

    # ---- stopping --------------------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` passed first."""
        if not self._in_flight:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> int:
        """Finish in-flight messages within ``timeout``; cancel the rest, unacked (redelivered).

        Returns how many were left unfinished.
        """
        self._closed = True
        left = 0 if await self.drain(timeout) else self._in_flight
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        # What was cancelled stays unsettled (and counted in ``in_flight``): the backend does
        # not ack it, so the broker delivers it again.
        self._parked.clear()
        self._active = 0
        return left
