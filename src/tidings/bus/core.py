"""Bus: publish events to subscribed handlers, inline or through a pool of workers.

Inline mode (the default) calls handlers in the publisher's thread, in subscription order.
Async mode hands events to a pool of worker threads (``tidings.bus.workers``) through bounded
queues, an event's key choosing its worker, so events of one key are handled in publish order
while different keys run in parallel. A failing handler never reaches the publisher: the
failure is logged, recorded, retried by policy on the clock (``tidings.bus.retries``, never by
sleeping in a worker) and finally dead-lettered (``tidings.bus.dead_letters``).

With ``transport=`` (a URL or a Transport) the same ``publish``/``subscribe`` go through a
broker instead; ``tidings.bus.broker_link`` holds all of that path.

One role, the ``Bus`` class (about 740 lines): what is left here is what every path of it
shares, subscribing, publishing, one attempt and its failure, draining and closing.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from tidings.bus.broker_link import BrokerLink
from tidings.bus.dead_letters import DeadLetter, DeadLetterQueue, DeadLetterRecorder
from tidings.bus.history import DeliveryHistory
from tidings.bus.reports import BusClosed, BusStats, CloseReport
from tidings.bus.retries import RetryScheduler
from tidings.bus.subscription import Handler, Subscription, handler_name
from tidings.bus.workers import WhenFull, WorkerPool
from tidings.clock import Clock, system_clock
from tidings.delivery import DeliveryStatus, HandlerDelivery
from tidings.event import DEFAULT_SOURCE, Event, _current
from tidings.middleware.base import Middleware, compose
from tidings.middleware.metrics import MetricsHook, MetricsMiddleware
from tidings.middleware.timeout import TimeoutMiddleware
from tidings.retry import RetryPolicy
from tidings.topics import PatternError, SubscriptionIndex, compile_pattern
from tidings.transport import SubscribeOptions, Transport

if TYPE_CHECKING:
    from tidings.config import Settings

__all__ = ["Bus"]

log = logging.getLogger("tidings.bus")

Mode = Literal["inline", "sync", "async"]
R = TypeVar("R")


class _Spawned(Exception):
    """A coroutine handler's bridge started it as a task of the running loop: the task records
    its own outcome, so the caller must count it neither handled nor failed."""


_MISSING = contextvars.Token.MISSING
_thread_loops = threading.local()


def _private_loop() -> asyncio.AbstractEventLoop:
    """An event loop owned by this thread, for coroutine handlers called from plain threads."""
    loop: asyncio.AbstractEventLoop | None = getattr(_thread_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_loops.loop = loop
    return loop


async def _with_current(call: Callable[[Event], Awaitable[Any]], event: Event) -> Any:
    token = _current.set(event)
    try:
        return await call(event)
    finally:
        _current.reset(token)


class Bus:
    """Publish/subscribe with glob patterns, retries and dead letters; see docs/bus.md.

    ``mode="inline"`` (alias ``"sync"``) runs handlers in the publisher's thread;
    ``mode="async"`` queues events for ``workers`` threads, at most ``buffer_size`` waiting
    (split evenly across workers), and applies ``when_full`` when a queue is full.
    ``source`` replaces the default ``source`` of every event published through this bus (a
    service names itself once, e.g. ``"billing/api-7"``); ``subscribe_options`` are the
    broker subscriptions' options where ``subscribe`` passes none.
    """

    def __init__(
        self,
        mode: Mode = "inline",
        *,
        workers: int = 4,
        buffer_size: int = 1000,
        when_full: WhenFull = "block",
        retry: RetryPolicy | None = None,
        middleware: Sequence[Middleware] = (),
        metrics: MetricsHook | None = None,
        track_deliveries: bool = False,
        history_size: int = 10_000,
        dead_letter_size: int = 10_000,
        publish_dead_letters: bool = False,
        clock: Clock | None = None,
        close_timeout: float = 5.0,
        loop: asyncio.AbstractEventLoop | None = None,
        transport: str | Transport | None = None,
        group: str | None = None,
        transport_options: Mapping[str, Any] | None = None,
        transport_timeout: float = 30.0,
        source: str | None = None,
        subscribe_options: SubscribeOptions | None = None,
    ) -> None:
        if mode not in ("inline", "sync", "async"):
            raise ValueError(f"Bus mode: expected 'inline', 'sync' or 'async', got {mode!r}")
        if when_full not in ("block", "drop", "raise"):
            raise ValueError(
                f"Bus when_full: expected 'block', 'drop' or 'raise', got {when_full!r}"
            )
        for name, value in (("workers", workers), ("buffer_size", buffer_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Bus {name}: expected a whole number >= 1, got {value!r}")
        if source is not None and (not isinstance(source, str) or not source):
            raise ValueError(f"Bus source: expected a non-empty string, got {source!r}")
        self.source = source
        self.mode: Literal["inline", "async"] = "async" if mode == "async" else "inline"
        self.when_full = when_full
        self.stats = BusStats()
        self.dead_letters = DeadLetterQueue(dead_letter_size)
        self.close_timeout = close_timeout
        self._clock: Clock = clock if clock is not None else system_clock()
        self._index: SubscriptionIndex[Subscription] = SubscriptionIndex()
        self._routes = self._index._cache
        self._lock = threading.Lock()
        self._retries = RetryScheduler(retry, self._clock, self._run_inline)
        self._dead_letters = DeadLetterRecorder(
            self.dead_letters, self.publish if publish_dead_letters else None
        )
        self._timeout_mw = TimeoutMiddleware()
        self._middleware: list[Middleware] = []
        if metrics is not None:
            self._middleware.append(MetricsMiddleware(metrics))
        self._middleware.extend(middleware)
        self._track = track_deliveries
        # One flag for what inline publish does besides calling handlers, so the plain path
        # pays a single check: a worker pool, delivery tracking, or a source to stamp.
        self._extra = track_deliveries or source is not None or mode == "async"
        self._history = DeliveryHistory(history_size)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = loop
        self._closing = False
        self._closed = False
        self._report: CloseReport | None = None
        self._pool: WorkerPool | None = None
        self._link: BrokerLink | None = None
        if transport is not None:
            if self.mode == "async":
                raise ValueError(
                    "Bus(transport=...) delivers through the transport's own consumers; "
                    "drop mode='async' (use SubscribeOptions(max_in_flight=...) for parallelism)"
                )
            self._link = BrokerLink(
                transport,
                group,
                dict(transport_options or {}),
                transport_timeout,
                stats=self.stats,
                closing=lambda: self._closing,
                default_retry=retry,
                default_options=subscribe_options,
                source=source,
            )
            # Instance attributes, so the in-process path keeps its methods untouched.
            self.publish = self._link.publish  # type: ignore[method-assign]
            self.apublish = self._link.apublish  # type: ignore[method-assign]
            self.publish_many = self._link.publish_many  # type: ignore[method-assign]
        elif group is not None or subscribe_options is not None:
            raise ValueError(
                "Bus(group=..., subscribe_options=...) needs a transport: "
                "Bus(transport='redis://...')"
            )
        if self.mode == "async":
            self._pool = WorkerPool(
                workers,
                buffer_size,
                when_full,
                self.stats,
                self._lock,
                attempt=self._attempt,
                failed=self._failed,
                retry_later=self._retries.schedule,
                new_deliveries=self._new_deliveries if track_deliveries else None,
            )

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike[str] | Settings | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> Bus:
        """The bus a YAML file (or loaded ``Settings``; None: ``$TIDINGS_CONFIG``) describes.

        Seed 002's ``event_broker.provider`` picks memory (in-process), redis, nats or database
        (PostgreSQL); ``enabled: false`` gives a NoopBus. See ``tidings.bus.from_config`` and
        docs/config.md for how each key maps.
        """
        from tidings.bus.from_config import build_bus  # noqa: PLC0415 - it builds on Bus

        return build_bus(config, env=env)

    # --- subscribing ----------------------------------------------------------------------

    @overload
    def subscribe(
        self,
        pattern: str,
        handler: None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        name: str | None = None,
        group: str | None = None,
        options: SubscribeOptions | None = None,
    ) -> Callable[[Handler], Subscription]: ...

    @overload
    def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        name: str | None = None,
        group: str | None = None,
        options: SubscribeOptions | None = None,
    ) -> Subscription: ...

    def subscribe(
        self,
        pattern: str,
        handler: Handler | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        name: str | None = None,
        group: str | None = None,
        options: SubscribeOptions | None = None,
    ) -> Subscription | Callable[[Handler], Subscription]:
        """Subscribe ``handler`` to event types matching ``pattern``.

        Used as ``bus.subscribe("a.*", fn)`` or as a decorator ``@bus.subscribe("a.*")``;
        both return the Subscription handle. With a transport, ``group`` (default: the bus's
        ``group``) makes members share the events, and ``options`` tunes the consumer.
        """
        compiled = compile_pattern(pattern)
        if self._link is None and (group is not None or options is not None):
            raise ValueError(
                "subscribe(group=..., options=...) needs a transport: Bus(transport='...')"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"subscribe retry: expected a RetryPolicy, got {type(retry).__name__}")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise ValueError(f"subscribe timeout: expected seconds > 0, got {timeout!r}")

        def register(fn: Handler) -> Subscription:
            if not callable(fn):
                raise TypeError(f"subscribe handler: expected a callable, got {fn!r}")
            sub = Subscription(self, compiled, fn, name or handler_name(fn), retry, timeout)
            self._compose(sub)
            if self._link is not None:
                self._link.subscribe(sub, group, options)
                with self._lock:
                    self._index.add(compiled, sub)
                return sub
            with self._lock:
                self._index.add(compiled, sub)
            return sub

        if handler is None:
            return register
        return register(handler)

    def _compose(self, sub: Subscription) -> None:
        """(Re)build ``sub``'s calls through the bus middleware; the timeout is innermost."""
        chain = [*self._middleware, self._timeout_mw]
        if sub.is_async:
            sub.acall = compose(sub.handler, chain, sub, is_async=True)
            if self._link is None:
                sub.call = self._bridge(sub)
        else:
            sub.call = compose(sub.handler, chain, sub, is_async=False)

    def add_middleware(self, middleware: Middleware) -> None:
        """Wrap every handler, present and future, in ``middleware`` as the outermost layer.

        Lets an exporter time the handlers of a bus built elsewhere; an attempt already
        running finishes through the chain it started with.
        """
        if not isinstance(middleware, Middleware):
            raise TypeError(
                f"add_middleware: expected a tidings Middleware, got {type(middleware).__name__}"
            )
        with self._lock:
            self._middleware.insert(0, middleware)
            subs = list(self._index.items())
        for sub in subs:
            self._compose(sub)

    def unsubscribe(self, sub: Subscription) -> bool:
        with self._lock:
            removed = self._index.remove(sub.pattern, sub)
        sub.active = False
        if removed and self._link is not None:
            self._link.unsubscribe(sub, self.close_timeout)
        return removed

    def subscriptions(self) -> list[Subscription]:
        return list(self._index.items())

    def matching(self, event_type: str) -> tuple[Subscription, ...]:
        """The subscriptions an event of ``event_type`` would be delivered to, in order."""
        return self._index.match(event_type)

    # --- publishing -----------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every matching handler (inline) or queue it (async mode)."""
        if self._closing:
            self._check_open()
        try:  # the cached route, inline: this is the hot path
            subs = self._routes[event.type]
        except (KeyError, AttributeError):
            subs = self._route(event, "publish")
        self.stats.published += 1
        if self._extra:
            self._stamp(event)
            if self._pool or self._track:
                self._publish_queued_or_tracked(event, subs)
                return
        token = _current.set(event)
        # The token's old value is the event being handled while this one is published.
        parent = token.old_value
        if parent is not _MISSING and parent is not None and event.causation_id is None:
            event.inherit(parent)
        try:
            for sub in subs:
                try:
                    sub.call(event)
                except _Spawned:
                    pass  # a coroutine handler now running as a task: it counts itself
                except Exception as exc:
                    self._failed_now(sub, event, exc)
                else:
                    sub.handled += 1
        finally:
            _current.reset(token)

    def _publish_queued_or_tracked(self, event: Event, subs: tuple[Subscription, ...]) -> None:
        parent = _current.get()
        if parent is not None and event.causation_id is None:
            event.inherit(parent)
        if not subs:
            return
        if self._pool is not None:
            self._pool.enqueue(event, subs)
            return
        for delivery in self._new_deliveries(event, subs):
            self._run_inline(delivery)

    async def apublish(self, event: Event) -> None:
        """Like ``publish``, awaiting coroutine handlers in this task (inline mode)."""
        if self._closing:
            self._check_open()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        try:  # the cached route, inline: this is the hot path
            subs = self._routes[event.type]
        except (KeyError, AttributeError):
            subs = self._route(event, "apublish")
        self.stats.published += 1
        if self.source is not None:
            self._stamp(event)
        parent = _current.get()
        if parent is not None and event.causation_id is None:
            event.inherit(parent)
        if not subs:
            return
        pool = self._pool
        if pool is not None:
            if pool.enqueue(event, subs, wait=False):
                return
            with self._lock:
                self.stats.blocked += 1
            while not pool.enqueue(event, subs, wait=False):
                await asyncio.sleep(0.001)
                if self._closing:
                    raise BusClosed("the bus closed while waiting for queue space")
            return
        deliveries = self._new_deliveries(event, subs) if self._track else None
        token = _current.set(event)
        try:
            for i, sub in enumerate(subs):
                delivery = deliveries[i] if deliveries is not None else None
                if delivery is not None:
                    self._start(delivery)
                try:
                    if sub.acall is not None:
                        await sub.acall(event)
                    else:
                        sub.call(event)
                except Exception as exc:
                    self._failed_now(sub, event, exc, delivery)
                else:
                    sub.handled += 1
                    if delivery is not None:
                        self._completed(delivery)
        finally:
            _current.reset(token)

    def _stamp(self, event: Event) -> None:
        """The bus's ``source`` on an event that kept the default one."""
        source = self.source
        if source is not None and isinstance(event, Event) and event.source == DEFAULT_SOURCE:
            event.source = source

    def _check_open(self) -> None:
        # While close() drains, handlers may still publish (their follow-up events are part of
        # the work being drained); everyone else is turned away.
        if self._closed or _current.get() is None:
            raise BusClosed("the bus is closed; publish before close() or use a new Bus")

    def publish_many(self, events: Iterable[Event]) -> None:
        for event in events:
            self.publish(event)

    def _route(self, event: Event, verb: str = "publish") -> tuple[Subscription, ...]:
        """The subscriptions for an event type not in the route cache (or a non-event)."""
        if not isinstance(event, Event):
            raise TypeError(f"{verb} expects a tidings Event, got {type(event).__name__}")
        if not isinstance(event.type, str) or not event.type or " " in event.type:
            raise PatternError(f"event {event.id}: type {event.type!r} is not a valid event type")
        return self._index.match(event.type)

    # --- attempts, failures and retries ---------------------------------------------------

    def _bridge(self, sub: Subscription) -> Callable[[Event], Any]:
        """A plain callable for a coroutine handler, used by ``publish`` and by workers."""
        acall = sub.acall
        assert acall is not None

        def call(event: Event) -> Any:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not None:
                # Called from inside an event loop: blocking it would deadlock, so the handler
                # runs as a task of that loop and handles its own failure.
                task = running.create_task(self._task_attempt(sub, event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                raise _Spawned
            home = self._loop
            if home is not None and home.is_running():
                future = asyncio.run_coroutine_threadsafe(_with_current(acall, event), home)
                return future.result()
            return _private_loop().run_until_complete(_with_current(acall, event))

        return call

    async def _task_attempt(self, sub: Subscription, event: Event) -> None:
        assert sub.acall is not None
        try:
            await sub.acall(event)
        except Exception as exc:
            self._failed_now(sub, event, exc)
        else:
            sub.handled += 1

    def _new_deliveries(
        self, event: Event, subs: tuple[Subscription, ...]
    ) -> list[HandlerDelivery]:
        now = self._clock.time()
        out = [HandlerDelivery(event, sub, sub.name, now) for sub in subs]
        for delivery in out:
            self._history.record(delivery)
        return out

    def _start(self, delivery: HandlerDelivery) -> None:
        delivery.attempts += 1
        delivery.status = DeliveryStatus.PROCESSING
        if delivery.started_at is None:
            delivery.started_at = self._clock.time()

    def _completed(self, delivery: HandlerDelivery) -> None:
        delivery.status = DeliveryStatus.COMPLETED
        delivery.finished_at = self._clock.time()
        delivery.next_attempt_at = None
        self._history.record(delivery)

    def _attempt(self, delivery: HandlerDelivery) -> float | None:
        """Run one attempt; return the delay before the next one, or None when finished."""
        sub: Subscription = delivery.subscription
        event = delivery.event
        self._start(delivery)
        if delivery.attempts > 1:
            with self._lock:
                self.stats.retried += 1
                sub.retried += 1
        token = _current.set(event)
        try:
            sub.call(event)
        except _Spawned:
            pass  # a coroutine handler now running as a task: it counts itself
        except Exception as exc:
            return self._failed(sub, event, exc, delivery)[1]
        else:
            sub.handled += 1
        finally:
            _current.reset(token)
        self._completed(delivery)
        return None

    def _run_inline(self, delivery: HandlerDelivery) -> None:
        delay = self._attempt(delivery)
        if delay is not None:
            self._retries.schedule(delivery, delay)

    def _failed_now(
        self,
        sub: Subscription,
        event: Event,
        exc: BaseException,
        delivery: HandlerDelivery | None = None,
    ) -> None:
        """A failed attempt outside the workers: record it and put its retry on the clock."""
        delivery, delay = self._failed(sub, event, exc, delivery)
        if delay is not None:
            self._retries.schedule(delivery, delay)

    def _failed(
        self,
        sub: Subscription,
        event: Event,
        exc: BaseException,
        delivery: HandlerDelivery | None = None,
    ) -> tuple[HandlerDelivery, float | None]:
        """Record a failed attempt; return the delivery and the retry delay (None = dead)."""
        now = self._clock.time()
        if delivery is None:
            delivery = HandlerDelivery(event, sub, sub.name, now)
            delivery.attempts = 1
            delivery.started_at = now
        delivery.error = str(exc) or type(exc).__name__
        delivery.error_type = type(exc).__qualname__
        with self._lock:
            self.stats.failed += 1
            sub.failed += 1
        delay = self._retries.next_delay(delivery, exc)
        if delay is None:
            delivery.finished_at = now
            delivery.next_attempt_at = None
            self._dead_letters.record(delivery, exc, now)
            with self._lock:
                self.stats.dead += 1
                sub.dead += 1
            log.error(
                "handler %s failed for event %s (%s) after %d attempt(s), dead-lettered: %s",
                sub.name,
                event.id,
                event.type,
                delivery.attempts,
                delivery.error,
                exc_info=exc,
            )
        else:
            delivery.status = DeliveryStatus.FAILED
            delivery.next_attempt_at = now + delay
            log.warning(
                "handler %s failed for event %s (%s), attempt %d; retry in %.3fs: %s",
                sub.name,
                event.id,
                event.type,
                delivery.attempts,
                delay,
                delivery.error,
            )
        self._history.record(delivery)
        return delivery, delay

    # --- inspection -------------------------------------------------------------------------

    def deliveries(
        self, event_id: str | None = None, status: DeliveryStatus | str | None = None
    ) -> list[HandlerDelivery]:
        """Recorded deliveries, oldest first.

        Failed, retried and dead deliveries are always recorded; successful ones only with
        ``track_deliveries=True`` (recording them costs time on the success path).
        """
        return self._history.list(event_id, status)

    def replay_dead_letters(self, where: Callable[[DeadLetter], bool] | None = None) -> int:
        """Deliver dead letters again to their handlers, with fresh retries; returns the count.

        Letters whose subscription has been removed stay in the queue.
        """
        letters = self.dead_letters.take(
            lambda d: (where is None or where(d)) and getattr(d.subscription, "active", False)
        )
        for letter in letters:
            sub: Subscription = letter.subscription
            delivery = HandlerDelivery(letter.event, sub, sub.name, self._clock.time())
            self._history.record(delivery)
            if self._pool is not None:
                self._pool.worker_for(letter.event.key).push((None, delivery, None))
            else:
                self._run_inline(delivery)
        return len(letters)

    # --- draining and closing -------------------------------------------------------------

    def _idle(self) -> bool:
        if self._link is not None:
            return self._link.idle()
        generation = self._retries.quiet()  # a retry calling close() does not wait for itself
        if generation is None:
            return False
        if self._pool is not None and not self._pool.is_drained():
            return False
        # Nothing moved between a timer, a running retry and a queue while we looked.
        return self._retries.unchanged_since(generation)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until queued events and scheduled retries are done; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._idle():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def close(self, timeout: float | None = None) -> CloseReport:
        """Stop taking events, finish queued work within ``timeout`` and report what is left."""
        if self._report is not None:
            return self._report
        self._closing = True
        limit = self.close_timeout if timeout is None else timeout
        if self._link is not None:
            self._closed = True
            self._report = self._link.close(limit)
            return self._report
        deadline = time.monotonic() + limit
        drained = self.drain(limit)
        self._closed = True
        report = CloseReport(drained=drained)
        # From here no retry starts and none is scheduled: what is left is reported.
        cancelled, running = self._retries.stop()
        report.pending_retries.extend(cancelled)
        if self._pool is not None:
            running += self._pool.stop(deadline, report)
        report.running_tasks = running + sum(1 for t in self._tasks if not t.done())
        report.drained = (
            drained
            and not report.unfinished_events
            and not report.pending_retries
            and not report.running_tasks
        )
        self._timeout_mw.close()
        if not report.drained:
            log.warning("bus closed: %s", report.summary())
        self._report = report
        return report

    async def aclose(self, timeout: float | None = None) -> CloseReport:
        """``close`` for asyncio code: also waits for handler tasks started on this loop."""
        limit = self.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=limit)
        # In a thread: retries of coroutine handlers run on this loop, which must stay free.
        left = max(deadline - time.monotonic(), 0.0)
        return await asyncio.get_running_loop().run_in_executor(None, self.close, left)

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def queue_depth(self) -> int:
        """Events waiting in the async workers' queues, parked ones included (0 inline)."""
        return self._pool.depth if self._pool is not None else 0

    @property
    def queue_capacity(self) -> int:
        """How many events the async queues hold before ``when_full`` applies (0 inline)."""
        return self._pool.capacity if self._pool is not None else 0

    @property
    def pending_retries(self) -> int:
        """Failed deliveries waiting for their next attempt on the clock."""
        return self._retries.pending

    @property
    def transport(self) -> Transport | None:
        """The broker this bus publishes through, if any (health(), dead_letters(), ...)."""
        return self._link.transport if self._link is not None else None

    def run_on_transport(self, coro: Coroutine[Any, Any, R], timeout: float | None = None) -> R:
        """Run a transport coroutine on the transport's loop from sync code; return its result.

        A broker client belongs to the loop it was started on, so calls such as
        ``bus.run_on_transport(bus.transport.dead_letters(sub.remote.name))`` go through here.
        """
        if self._link is None:
            coro.close()
            raise ValueError("run_on_transport needs a transport: Bus(transport='...')")
        return self._link.call(coro, timeout)

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
