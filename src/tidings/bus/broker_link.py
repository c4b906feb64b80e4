"""BrokerLink: the private event-loop thread behind ``Bus(transport=...)``.

With a transport, ``Bus.publish``/``subscribe`` go through a broker instead of the in-process
dispatch: this module runs the transport on a loop thread of its own and bridges the bus's sync
and async calls to it. The transport's shared Dispatcher gives handlers at-least-once delivery,
order per key, retries and a dead-letter queue; the link only notes which failed deliveries
wait for a retry, so that ``close()`` can report them. Nothing of the in-process bus needs it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from tidings.bus.reports import BusClosed, BusStats, CloseReport
from tidings.bus.subscription import Subscription
from tidings.delivery import DeliveryStatus, HandlerDelivery
from tidings.event import DEFAULT_SOURCE, Event, _current
from tidings.retry import RetryPolicy
from tidings.transport import SubscribeOptions, Transport, TransportError, TransportSubscription
from tidings.transports import open_transport, redact_url

__all__ = ["BrokerLink"]

log = logging.getLogger("tidings.bus")

R = TypeVar("R")


class BrokerLink:
    """Runs a Transport for a Bus on a private event-loop thread.

    Sync code cannot await, and a broker client is bound to one event loop, so the transport
    lives on its own loop thread: ``publish`` hands the coroutine over and blocks until the
    server accepted the event; ``apublish`` awaits it directly when already on that loop.
    Handlers are wrapped with the bus middleware; plain functions run on worker threads so a
    slow one never stalls the consumer loop, and may themselves call ``publish``.
    """

    def __init__(
        self,
        transport: str | Transport,
        group: str | None,
        options: dict[str, Any],
        timeout: float,
        *,
        stats: BusStats,
        closing: Callable[[], bool],
        default_retry: RetryPolicy | None,
        default_options: SubscribeOptions | None = None,
        source: str | None = None,
    ) -> None:
        if isinstance(transport, str):
            transport = open_transport(transport, **options)
        elif options:
            raise ValueError("transport_options apply to a transport URL, not a Transport object")
        self.stats = stats  # the bus's: ``published`` counts what the broker accepted
        self._bus_closing = closing  # the bus is closing: only its handlers may still publish
        self.default_retry = default_retry  # the bus's, for subscriptions without their own
        self.default_options = default_options  # the bus's, for subscribe() without options
        self.source = source  # stamped on events that kept the default source
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
        if self._closed or (self._bus_closing() and _current.get() is None):
            raise BusClosed("the bus is closed; publish before close() or use a new Bus")
        if not isinstance(event, Event):
            raise TypeError(f"publish expects a tidings Event, got {type(event).__name__}")
        if self.source is not None and event.source == DEFAULT_SOURCE:
            event.source = self.source
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
        self.stats.published += 1

    def publish_many(self, events: Iterable[Event]) -> None:
        batch = list(events)
        for event in batch:
            self._check(event)
        if self._on_loop():
            for event in batch:
                self.publish(event)
            return
        self.call(self.transport.publish_many(batch))
        self.stats.published += len(batch)

    async def apublish(self, event: Event) -> None:
        self._check(event)
        if asyncio.get_running_loop() is self.loop:
            await self.transport.publish(event)
        else:
            future = asyncio.run_coroutine_threadsafe(self.transport.publish(event), self.loop)
            await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        self.stats.published += 1

    def _publish_done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is None:
            self.stats.published += 1
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
        if options is None:
            options = self.default_options
        opts = options if options is not None else SubscribeOptions()
        changes: dict[str, Any] = {}
        if group is not None or (self.group is not None and opts.group is None):
            changes["group"] = group if group is not None else self.group
        policy = sub.retry if sub.retry is not None else self.default_retry
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
        invoke: Callable[[Event], Awaitable[None]]
        if sub.is_async:

            async def invoke(event: Event) -> None:
                acall = sub.acall
                assert acall is not None
                token = _current.set(event)
                try:
                    await acall(event)
                finally:
                    _current.reset(token)

        else:

            def in_thread(event: Event) -> None:
                token = _current.set(event)
                try:
                    sub.call(event)
                finally:
                    _current.reset(token)

            async def invoke(event: Event) -> None:
                # A worker thread, so a slow plain handler never stalls the consumer loop.
                await asyncio.to_thread(in_thread, event)

        async def run(event: Event) -> None:
            n = next(calls)
            running[n] = event
            attempt = self._attempt(sub, event)
            try:
                await invoke(event)
            except asyncio.CancelledError:
                # Stays in `running` (a thread may still run it): close() reports it unfinished.
                raise
            except BaseException as exc:
                running.pop(n, None)
                if isinstance(exc, Exception):
                    self._failed(sub, event, attempt, policy, exc)
                raise
            else:
                running.pop(n, None)

        return run

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
