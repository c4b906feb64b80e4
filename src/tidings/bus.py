"""Bus: publish events to subscribed handlers, inline, through a pool of workers, or a broker.

Inline mode (the default) calls handlers in the publisher's thread, in subscription order.
Async mode hands events to ``workers`` threads through bounded queues; an event goes to the
worker chosen by its key (aggregate id, else subject), so events of one key are handled in
publish order while different keys run in parallel. A failing handler never reaches the
publisher: the failure is logged, recorded, retried by policy on the clock (never by sleeping in
a worker) and finally dead-lettered.

With ``transport=`` (a URL or a Transport) the same ``publish``/``subscribe`` go through a broker
instead: the bus runs the transport on a private event-loop thread, and the transport's shared
Dispatcher gives handlers at-least-once delivery, order per key, retries and a dead-letter queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import inspect
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from tidings.clock import Clock, Timer, system_clock
from tidings.delivery import DeliveryStatus, HandlerDelivery
from tidings.event import Event, _current
from tidings.middleware.base import Middleware, compose
from tidings.middleware.dead_letter import DeadLetter, DeadLetterMiddleware, DeadLetterQueue
from tidings.middleware.metrics import MetricsHook, MetricsMiddleware
from tidings.middleware.retry import RetryMiddleware
from tidings.middleware.timeout import TimeoutMiddleware
from tidings.retry import RetryPolicy
from tidings.topics import Pattern, PatternError, SubscriptionIndex, compile_pattern
from tidings.transport import SubscribeOptions, Transport, TransportError, TransportSubscription
from tidings.transports import open_transport, redact_url

if TYPE_CHECKING:
    from tidings.config import Settings

__all__ = ["Bus", "BusClosed", "BusQueueFull", "BusStats", "CloseReport", "Subscription"]

log = logging.getLogger("tidings.bus")

Mode = Literal["inline", "sync", "async"]
WhenFull = Literal["block", "drop", "raise"]
Handler = Callable[[Any], Any]
H = TypeVar("H", bound=Handler)
R = TypeVar("R")


class BusClosed(RuntimeError):
    """The bus is closing or closed and takes no more events."""


class BusQueueFull(RuntimeError):
    """Async mode with ``when_full="raise"``: the worker queue for this event's key is full."""


class _Spawned(Exception):
    """A coroutine handler's bridge started it as a task of the running loop: the task records
    its own outcome, so the caller must count it neither handled nor failed."""


@dataclass(slots=True)
class BusStats:
    """Bus-wide counters, read by exporters (``tidings.integrations.prometheus``).

    The success path counts only ``published`` (one int increment); the rest count on the
    slow paths. Per-handler counts live on each Subscription. Success-path increments take no
    lock: under CPython's GIL ``obj.n += 1`` is not interrupted between its read and write.
    """

    published: int = 0  # events taken by publish/apublish (dropped ones included)
    failed: int = 0  # handler attempts that raised
    retried: int = 0  # attempts after the first
    dead: int = 0  # deliveries dead-lettered
    dropped: int = 0  # async, when_full="drop": events dropped at a full queue
    blocked: int = 0  # async, when_full="block": publishes that had to wait for room
    rejected: int = 0  # async, when_full="raise": publishes refused with BusQueueFull


@dataclass(slots=True)
class CloseReport:
    """What ``close`` could not finish before its deadline."""

    drained: bool
    unfinished_events: list[Event] = field(default_factory=list)
    pending_retries: list[HandlerDelivery] = field(default_factory=list)
    running_tasks: int = 0

    def __bool__(self) -> bool:
        return self.drained

    def summary(self) -> str:
        if self.drained:
            return "drained: nothing left unfinished"
        return (
            f"not drained: {len(self.unfinished_events)} queued event(s) not handled, "
            f"{len(self.pending_retries)} retry(ies) cancelled, "
            f"{self.running_tasks} handler task(s) still running"
        )


class Subscription:
    """A handler subscribed to a pattern. Call ``unsubscribe()`` to stop it.

    The subscription is callable and calls the handler, so the decorator form leaves the
    decorated function usable as before. ``handled``, ``failed``, ``retried`` and ``dead``
    count its attempts in process (with a transport, its consumer's ``remote.stats`` does).
    """

    __slots__ = (
        "__weakref__",
        "_bus",
        "acall",
        "active",
        "call",
        "dead",
        "failed",
        "handled",
        "handler",
        "is_async",
        "name",
        "pattern",
        "remote",
        "retried",
        "retry",
        "timeout",
    )

    def __init__(
        self,
        bus: Bus,
        pattern: Pattern,
        handler: Handler,
        name: str,
        retry: RetryPolicy | None,
        timeout: float | None,
    ) -> None:
        self._bus = bus
        self.pattern = pattern
        self.handler = handler
        self.name = name
        self.retry = retry
        self.timeout = timeout
        self.is_async = _is_coroutine_function(handler)
        self.active = True
        self.call: Callable[[Event], Any] = handler
        self.acall: Callable[[Event], Awaitable[Any]] | None = None
        # With Bus(transport=...): the broker-side subscription (its ``name`` keys the DLQ).
        self.remote: TransportSubscription | None = None
        self.handled = 0  # attempts that returned
        self.failed = 0  # attempts that raised
        self.retried = 0  # attempts after the first
        self.dead = 0  # deliveries dead-lettered

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)

    def unsubscribe(self) -> bool:
        """Stop delivering to this handler; False if it was already unsubscribed."""
        return self._bus.unsubscribe(self)

    def __repr__(self) -> str:
        return f"Subscription({self.pattern.text!r}, {self.name})"


def _is_coroutine_function(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _handler_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qual}" if module else qual


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


_Item = tuple[Event | None, Any, Any]


class _Worker:
    """One async-mode worker thread and its bounded queue."""

    def __init__(self, bus: Bus, index: int, capacity: int) -> None:
        self.bus = bus
        self.capacity = capacity
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
        bus = self.bus
        if deliveries is not None:
            for delivery in deliveries:
                delay = bus._attempt(delivery)
                if delay is not None:
                    self.hold(key)
                    bus._schedule_retry(delivery, delay, self)
            return
        token = _current.set(event)
        try:
            for sub in subs:
                try:
                    sub.call(event)
                except Exception as exc:
                    delivery, delay = bus._failed(sub, event, exc)
                    if delay is not None:
                        self.hold(key)
                        bus._schedule_retry(delivery, delay, self)
                else:
                    sub.handled += 1
        finally:
            _current.reset(token)

    def hold(self, key: str | None) -> None:
        if key is not None:
            self.parked.setdefault(key, deque())
            self.retrying[key] = self.retrying.get(key, 0) + 1

    def run_retry(self, delivery: HandlerDelivery) -> None:
        delay = self.bus._attempt(delivery)
        if delay is not None:
            self.bus._schedule_retry(delivery, delay, self)
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


class _TransportLink:
    """Runs a Transport for a Bus on a private event-loop thread.

    Sync code cannot await, and a broker client is bound to one event loop, so the transport
    lives on its own loop thread: ``publish`` hands the coroutine over and blocks until the
    server accepted the event; ``apublish`` awaits it directly when already on that loop.
    Handlers are wrapped with the bus middleware; plain functions run on worker threads so a
    slow one never stalls the consumer loop, and may themselves call ``publish``.
    """

    def __init__(
        self,
        bus: Bus,
        transport: str | Transport,
        group: str | None,
        options: dict[str, Any],
        timeout: float,
    ) -> None:
        if isinstance(transport, str):
            transport = open_transport(transport, **options)
        elif options:
            raise ValueError("transport_options apply to a transport URL, not a Transport object")
        self.bus = bus
        self.transport: Transport = transport
        self.group = group
        self.timeout = timeout
        self._remote: dict[Subscription, TransportSubscription] = {}
        self._running: dict[int, Event] = {}  # handler calls in progress, by call id
        # Deliveries whose last attempt failed and that the transport will retry: what a
        # close() that cannot wait for them reports as pending retries.
        self._waiting: dict[tuple[Subscription, str], HandlerDelivery] = {}
        self._calls = itertools.count()
        self._pending: set[asyncio.Task[None]] = set()  # publishes started on the loop thread
        self._closed = False
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="tidings-transport", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self.call(self.transport.start(), timeout)
        except BaseException:
            self._stop_loop(1.0)
            raise

    # --- running coroutines on the transport loop -----------------------------------------

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def call(self, coro: Coroutine[Any, Any, R], timeout: float | None = None) -> R:
        """Run ``coro`` on the transport loop and wait for its result (from any other thread)."""
        if self._on_loop():
            coro.close()
            raise RuntimeError(
                "this Bus call blocks until the transport answers, so it cannot run inside a "
                "coroutine handler (on the transport's loop); publish there with "
                "`await bus.apublish(...)` and subscribe or close from outside handlers"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(self.timeout if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TransportError(
                f"transport {redact_url(self.transport.url)} did not answer within "
                f"{self.timeout if timeout is None else timeout}s"
            ) from None

    def _check(self, event: Any) -> None:
        # While close() drains, handlers may still publish their follow-up events.
        if self._closed or (self.bus._closing and _current.get() is None):
            raise BusClosed("the bus is closed; publish before close() or use a new Bus")
        if not isinstance(event, Event):
            raise TypeError(f"publish expects a tidings Event, got {type(event).__name__}")
        parent = _current.get()
        if parent is not None and event.causation_id is None:
            event.inherit(parent)

    # --- publishing ---------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Send ``event``; returns once the transport's server accepted it."""
        self._check(event)
        if self._on_loop():
            # Called from a coroutine handler on the transport loop: blocking would deadlock,
            # so the send runs as a task; close() waits for it and errors are logged.
            task = self.loop.create_task(self.transport.publish(event))
            self._pending.add(task)
            task.add_done_callback(self._publish_done)
            return
        self.call(self.transport.publish(event))
        self.bus.stats.published += 1

    def publish_many(self, events: Iterable[Event]) -> None:
        batch = list(events)
        for event in batch:
            self._check(event)
        if self._on_loop():
            for event in batch:
                self.publish(event)
            return
        self.call(self.transport.publish_many(batch))
        self.bus.stats.published += len(batch)

    async def apublish(self, event: Event) -> None:
        self._check(event)
        if asyncio.get_running_loop() is self.loop:
            await self.transport.publish(event)
        else:
            future = asyncio.run_coroutine_threadsafe(self.transport.publish(event), self.loop)
            await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        self.bus.stats.published += 1

    def _publish_done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is None:
            self.bus.stats.published += 1
        elif not task.cancelled():
            log.error(
                "publish from a handler through %s failed: %s",
                redact_url(self.transport.url),
                task.exception(),
            )

    # --- subscribing --------------------------------------------------------------------------

    def subscribe(
        self,
        sub: Subscription,
        group: str | None,
        options: SubscribeOptions | None,
    ) -> None:
        opts = options if options is not None else SubscribeOptions()
        changes: dict[str, Any] = {}
        if group is not None or (self.group is not None and opts.group is None):
            changes["group"] = group if group is not None else self.group
        policy = sub.retry if sub.retry is not None else self.bus._retrier.default
        if policy is not None:
            changes["retry"] = policy
        if changes:
            opts = dataclasses.replace(opts, **changes)
        handler = self._wrap(sub, opts.retry)
        remote = self.call(self.transport.subscribe(sub.pattern.text, handler, opts))
        self._remote[sub] = remote
        sub.remote = remote

    def _attempt(self, sub: Subscription, event: Event) -> int:
        """The number of the attempt starting now (the dispatcher retries one at a time)."""
        waiting = self._waiting.pop((sub, event.id), None)
        return 1 if waiting is None else waiting.attempts + 1

    def _failed(
        self, sub: Subscription, event: Event, attempt: int, policy: RetryPolicy, exc: Exception
    ) -> None:
        """Note a failed attempt the transport's dispatcher will retry (same policy, same
        count), so that close() can report it if it has to cancel the retry."""
        if not policy.should_retry(attempt, exc):
            return
        delivery = HandlerDelivery(event, sub, sub.name, time.time())
        delivery.attempts = attempt
        delivery.status = DeliveryStatus.FAILED
        delivery.error = str(exc) or type(exc).__name__
        delivery.error_type = type(exc).__qualname__
        self._waiting[(sub, event.id)] = delivery

    def _wrap(self, sub: Subscription, policy: RetryPolicy) -> Callable[[Event], Any]:
        """The transport's handler for ``sub``; it calls ``sub.call``/``sub.acall`` (the bus
        middleware chain, which ``Bus.add_middleware`` may rebuild) at each delivery."""
        running = self._running
        calls = self._calls
        if sub.is_async:

            async def run_async(event: Event) -> None:
                n = next(calls)
                running[n] = event
                attempt = self._attempt(sub, event)
                token = _current.set(event)
                try:
                    acall = sub.acall
                    assert acall is not None
                    await acall(event)
                except asyncio.CancelledError:
                    raise  # stays in `running`: close() reports it unfinished
                except BaseException as exc:
                    running.pop(n, None)
                    if isinstance(exc, Exception):
                        self._failed(sub, event, attempt, policy, exc)
                    raise
                else:
                    running.pop(n, None)
                finally:
                    _current.reset(token)

            return run_async

        def in_thread(event: Event) -> None:
            token = _current.set(event)
            try:
                sub.call(event)
            finally:
                _current.reset(token)

        async def run_sync(event: Event) -> None:
            n = next(calls)
            running[n] = event
            attempt = self._attempt(sub, event)
            try:
                await asyncio.to_thread(in_thread, event)
            except asyncio.CancelledError:
                raise  # the thread may still run; close() reports the event unfinished
            except BaseException as exc:
                running.pop(n, None)
                if isinstance(exc, Exception):
                    self._failed(sub, event, attempt, policy, exc)
                raise
            else:
                running.pop(n, None)

        return run_sync

    def unsubscribe(self, sub: Subscription, timeout: float) -> None:
        remote = self._remote.pop(sub, None)
        if remote is None:
            return
        if self._on_loop():
            task = self.loop.create_task(remote.close(timeout))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return
        self.call(remote.close(timeout), timeout + 5.0)

    def idle(self) -> bool:
        """No handler running, no publish pending, nothing waiting where the transport knows."""
        if self._running or any(not t.done() for t in self._pending):
            return False
        lag = self.transport.health().lag
        return not lag

    # --- closing ------------------------------------------------------------------------------

    def close(self, timeout: float) -> CloseReport:
        """Close subscriptions (draining handlers) and the transport; report what was left."""
        if self._on_loop():
            raise RuntimeError("Bus.close() cannot run inside one of its own handlers")
        deadline = time.monotonic() + timeout

        async def shut() -> None:
            if self._pending:
                await asyncio.wait(list(self._pending), timeout=timeout)
            remaining = max(deadline - time.monotonic(), 0.0)
            subs = list(self._remote.values())
            self._remote.clear()
            await asyncio.gather(*(s.close(remaining) for s in subs), return_exceptions=True)
            await self.transport.close(max(deadline - time.monotonic(), 0.0))

        error: BaseException | None = None
        try:
            self.call(shut(), timeout + 10.0)
            self._closed = True
        except Exception as exc:  # still stop the loop; report the failure
            error = exc
            log.error("closing transport %s failed: %s", redact_url(self.transport.url), exc)
        self._closed = True
        report = CloseReport(drained=True)
        report.unfinished_events = list(self._running.values())
        # An unsubscribed handler's retries ended with it (the broker keeps the message).
        report.pending_retries = [d for d in self._waiting.values() if d.subscription.active]
        report.running_tasks = sum(1 for t in self._pending if not t.done())
        report.drained = (
            error is None
            and not report.unfinished_events
            and not report.pending_retries
            and not report.running_tasks
        )
        self._stop_loop(max(deadline - time.monotonic(), 0.5))
        if not report.drained:
            log.warning(
                "bus closed: %s (unfinished events stay unacked: the broker delivers them again)",
                report.summary(),
            )
        return report

    def _stop_loop(self, timeout: float) -> None:
        loop = self.loop
        if loop.is_closed():
            return

        async def cancel_rest() -> None:
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            loop.close()


class Bus:
    """Publish/subscribe with glob patterns, retries and dead letters; see docs/bus.md.

    ``mode="inline"`` (alias ``"sync"``) runs handlers in the publisher's thread;
    ``mode="async"`` queues events for ``workers`` threads, at most ``buffer_size`` waiting
    (split evenly across workers), and applies ``when_full`` when a queue is full.
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
        self.mode: Literal["inline", "async"] = "async" if mode == "async" else "inline"
        self.when_full = when_full
        self.stats = BusStats()
        self.dead_letters = DeadLetterQueue(dead_letter_size)
        self.close_timeout = close_timeout
        self._clock: Clock = clock if clock is not None else system_clock()
        self._index: SubscriptionIndex[Subscription] = SubscriptionIndex()
        self._routes = self._index._cache
        self._lock = threading.Lock()
        self._retrier = RetryMiddleware(retry)
        self._dead = DeadLetterMiddleware(
            self.dead_letters, self.publish if publish_dead_letters else None
        )
        self._timeout_mw = TimeoutMiddleware()
        self._middleware: list[Middleware] = []
        if metrics is not None:
            self._middleware.append(MetricsMiddleware(metrics))
        self._middleware.extend(middleware)
        self._track = track_deliveries
        self._history: OrderedDict[tuple[str, int], HandlerDelivery] = OrderedDict()
        self._history_size = history_size
        # Retries scheduled on the clock (not yet due), and inline retries running now (by the
        # thread running them). Every move between "scheduled", "running" and a worker's queue
        # bumps _retry_gen, so drain() can tell a quiet moment from one it happened to miss.
        self._timers: dict[HandlerDelivery, Timer | None] = {}
        self._firing: dict[HandlerDelivery, int] = {}
        self._retry_gen = 0
        self._retries_stopped = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = loop
        self._closing = False
        self._closed = False
        self._report: CloseReport | None = None
        self._workers: list[_Worker] = []
        self._rr = itertools.count()
        self._link: _TransportLink | None = None
        if transport is not None:
            if self.mode == "async":
                raise ValueError(
                    "Bus(transport=...) delivers through the transport's own consumers; "
                    "drop mode='async' (use SubscribeOptions(max_in_flight=...) for parallelism)"
                )
            self._link = _TransportLink(
                self, transport, group, dict(transport_options or {}), transport_timeout
            )
            # Instance attributes, so the in-process path keeps its methods untouched.
            self.publish = self._link.publish  # type: ignore[method-assign]
            self.apublish = self._link.apublish  # type: ignore[method-assign]
            self.publish_many = self._link.publish_many  # type: ignore[method-assign]
        elif group is not None:
            raise ValueError("Bus(group=...) needs a transport: Bus(transport='redis://...')")
        if self.mode == "async":
            per_worker = -(-buffer_size // workers)
            self._workers = [_Worker(self, i, per_worker) for i in range(workers)]
            for w in self._workers:
                w.thread.start()

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike[str] | Settings | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> Bus:
        """The bus a YAML file (or loaded ``Settings``; None: ``$TIDINGS_CONFIG``) describes.

        Seed 002's ``event_broker.provider`` picks memory (in-process), redis, nats or database
        (PostgreSQL); ``enabled: false`` gives a NoopBus. See ``tidings.bus_config`` and
        docs/config.md for how each key maps.
        """
        from tidings.bus_config import build_bus  # noqa: PLC0415 - it builds on Bus (a cycle)

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
            sub = Subscription(self, compiled, fn, name or _handler_name(fn), retry, timeout)
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
        try:
            subs = self._routes[event.type]
        except KeyError:
            subs = self._route(event)
        except AttributeError:
            raise TypeError(
                f"publish expects a tidings Event, got {type(event).__name__}"
            ) from None
        self.stats.published += 1
        if self._workers or self._track:
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
                    delivery, delay = self._failed(sub, event, exc)
                    if delay is not None:
                        self._schedule_retry(delivery, delay, None)
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
        if self._workers:
            self._enqueue(event, subs)
            return
        for delivery in self._new_deliveries(event, subs):
            self._run_inline(delivery)

    async def apublish(self, event: Event) -> None:
        """Like ``publish``, awaiting coroutine handlers in this task (inline mode)."""
        if self._closing:
            self._check_open()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        try:
            subs = self._routes[event.type]
        except KeyError:
            subs = self._route(event)
        except AttributeError:
            raise TypeError(
                f"apublish expects a tidings Event, got {type(event).__name__}"
            ) from None
        self.stats.published += 1
        parent = _current.get()
        if parent is not None and event.causation_id is None:
            event.inherit(parent)
        if not subs:
            return
        if self._workers:
            if self._enqueue(event, subs, wait=False):
                return
            with self._lock:
                self.stats.blocked += 1
            while not self._enqueue(event, subs, wait=False):
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
                    delivery, delay = self._failed(sub, event, exc, delivery)
                    if delay is not None:
                        self._schedule_retry(delivery, delay, None)
                else:
                    sub.handled += 1
                    if delivery is not None:
                        self._completed(delivery)
        finally:
            _current.reset(token)

    def _check_open(self) -> None:
        # While close() drains, handlers may still publish (their follow-up events are part of
        # the work being drained); everyone else is turned away.
        if self._closed or _current.get() is None:
            raise BusClosed("the bus is closed; publish before close() or use a new Bus")

    def publish_many(self, events: Iterable[Event]) -> None:
        for event in events:
            self.publish(event)

    def _route(self, event: Event) -> tuple[Subscription, ...]:
        if not isinstance(event, Event):
            raise TypeError(f"publish expects a tidings Event, got {type(event).__name__}")
        if not isinstance(event.type, str) or not event.type or " " in event.type:
            raise PatternError(f"event {event.id}: type {event.type!r} is not a valid event type")
        return self._index.match(event.type)

    def _enqueue(self, event: Event, subs: tuple[Subscription, ...], wait: bool = True) -> bool:
        workers = self._workers
        key = event.key
        if key is None:
            worker = workers[next(self._rr) % len(workers)]
        else:
            worker = workers[hash(key) % len(workers)]
        if len(worker.q) >= worker.capacity and not self._make_room(worker, event, wait):
            # Dropped (handled, counted) or, for apublish, "wait and try again".
            return self.when_full == "drop"
        deliveries = self._new_deliveries(event, subs) if self._track else None
        worker.push((event, subs, deliveries))
        return True

    def _make_room(self, worker: _Worker, event: Event, wait: bool) -> bool:
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
            delivery, delay = self._failed(sub, event, exc)
            if delay is not None:
                self._schedule_retry(delivery, delay, None)
        else:
            sub.handled += 1

    def _new_deliveries(
        self, event: Event, subs: tuple[Subscription, ...]
    ) -> list[HandlerDelivery]:
        now = self._clock.time()
        out = [HandlerDelivery(event, sub, sub.name, now) for sub in subs]
        for delivery in out:
            self._record(delivery)
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
        self._record(delivery)

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
            self._schedule_retry(delivery, delay, None)

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
        delay = self._retrier.next_delay(delivery, exc)
        if delay is None:
            delivery.finished_at = now
            delivery.next_attempt_at = None
            self._dead.dead(delivery, exc, now)
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
        self._record(delivery)
        return delivery, delay

    def _schedule_retry(
        self, delivery: HandlerDelivery, delay: float, worker: _Worker | None
    ) -> None:
        """Run the next attempt of ``delivery`` after ``delay``, unless close() stops it first.

        The timer's entry leaves ``_timers`` only when the attempt starts (under the lock, so
        close() either cancels the retry or sees it running, never neither); an inline attempt
        is then in ``_firing`` until it ends, a worker's is in that worker's queue.
        """

        def fire() -> None:
            with self._lock:
                if delivery not in self._timers:
                    return  # cancelled by close()
                del self._timers[delivery]
                self._retry_gen += 1
                if worker is not None:
                    worker.push((None, delivery, None), front=True)
                    return
                self._firing[delivery] = threading.get_ident()
            try:
                self._run_inline(delivery)
            finally:
                with self._lock:
                    self._firing.pop(delivery, None)
                    self._retry_gen += 1

        with self._lock:
            if self._retries_stopped:
                log.warning(
                    "handler %s: retry of event %s not scheduled, the bus is closed "
                    "(close() reported this attempt as still running)",
                    delivery.handler,
                    delivery.event.id,
                )
                return
            self._timers[delivery] = None
            self._retry_gen += 1
        timer = self._clock.call_later(delay, fire)
        with self._lock:
            if delivery in self._timers:
                self._timers[delivery] = timer

    def _record(self, delivery: HandlerDelivery) -> None:
        key = (delivery.event.id, id(delivery.subscription))
        with self._lock:
            history = self._history
            history[key] = delivery
            history.move_to_end(key)
            while len(history) > self._history_size:
                history.popitem(last=False)

    # --- inspection -------------------------------------------------------------------------

    def deliveries(
        self, event_id: str | None = None, status: DeliveryStatus | str | None = None
    ) -> list[HandlerDelivery]:
        """Recorded deliveries, oldest first.

        Failed, retried and dead deliveries are always recorded; successful ones only with
        ``track_deliveries=True`` (recording them costs time on the success path).
        """
        with self._lock:
            items = list(self._history.values())
        return [
            d
            for d in items
            if (event_id is None or d.event.id == event_id)
            and (status is None or d.status == status)
        ]

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
            self._record(delivery)
            if self._workers:
                key = letter.event.key
                workers = self._workers
                worker = workers[(hash(key) if key is not None else next(self._rr)) % len(workers)]
                worker.push((None, delivery, None))
            else:
                self._run_inline(delivery)
        return len(letters)

    # --- draining and closing -------------------------------------------------------------

    def _idle(self) -> bool:
        if self._link is not None:
            return self._link.idle()
        me = threading.get_ident()  # a retry that calls close() does not wait for itself
        with self._lock:
            gen = self._retry_gen
            if self._timers or any(t != me for t in self._firing.values()):
                return False
        if not all(w.is_drained() for w in self._workers):
            return False
        with self._lock:
            # Nothing moved between a timer, a running retry and a queue while we looked.
            return gen == self._retry_gen and not self._timers

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
        me = threading.get_ident()
        with self._lock:
            # From here no retry starts and none is scheduled: what is left is reported.
            self._retries_stopped = True
            timers = dict(self._timers)
            self._timers.clear()
            running = sum(1 for t in self._firing.values() if t != me)
        for delivery, timer in timers.items():
            if timer is not None:
                timer.cancel()
            report.pending_retries.append(delivery)
        for w in self._workers:
            w.stopping = True
            with w.cond:
                w.cond.notify()
            with w.space:
                w.space.notify_all()
        for w in self._workers:
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
        depth = 0
        for w in self._workers:
            depth += len(w.q) + sum(len(p) for p in list(w.parked.values()))
        return depth

    @property
    def queue_capacity(self) -> int:
        """How many events the async queues hold before ``when_full`` applies (0 inline)."""
        return sum(w.capacity for w in self._workers)

    @property
    def pending_retries(self) -> int:
        """Failed deliveries waiting for their next attempt on the clock."""
        with self._lock:
            return len(self._timers)

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
