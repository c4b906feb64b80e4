"""The in-process Bus: subscription, dispatch, failures, retries, dead letters, async mode."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from typing import Any

import pytest

from tidings import Bus, Event, RetryPolicy
from tidings.bus import BusClosed, BusQueueFull, DeadLettered
from tidings.delivery import DeliveryStatus
from tidings.event import current_event
from tidings.middleware import HandlerTimeout, Middleware
from tidings.testing import FakeClock
from tidings.topics import PatternError
from tidings.transport import SubscribeOptions


class OrderPlaced(Event, type="order.placed"):
    order_id: str
    amount: float = 0.0


class OrderShipped(Event, type="order.shipped"):
    order_id: str


class Boom(Exception):
    pass


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.001)


# --- subscribing and inline dispatch ---------------------------------------------------------


def test_decorator_and_call_form_return_handles_that_unsubscribe() -> None:
    bus = Bus()
    seen: list[str] = []

    @bus.subscribe("order.*")
    def on_order(event: Event) -> None:
        seen.append(f"deco:{event.type}")

    handle = bus.subscribe("order.placed", lambda e: seen.append(f"call:{e.type}"))
    bus.publish(OrderPlaced(order_id="1"))
    assert seen == ["deco:order.placed", "call:order.placed"]

    assert handle.unsubscribe() is True
    assert handle.unsubscribe() is False
    bus.publish(OrderPlaced(order_id="2"))
    assert seen[-1] == "deco:order.placed" and len(seen) == 3

    on_order.unsubscribe()
    bus.publish(OrderPlaced(order_id="3"))
    assert len(seen) == 3
    # The decorated name is still usable as the function.
    on_order(OrderShipped(order_id="x"))
    assert seen[-1] == "deco:order.shipped"


def test_inline_publish_calls_handlers_in_subscription_order_with_patterns() -> None:
    bus = Bus()
    calls: list[str] = []
    bus.subscribe("**", lambda e: calls.append("all"))
    bus.subscribe("order.shipped", lambda e: calls.append("exact"))
    bus.subscribe("*.shipped", lambda e: calls.append("star"))
    bus.subscribe("order.placed", lambda e: calls.append("other"))
    bus.subscribe("order.**", lambda e: calls.append("dstar"))
    bus.publish(OrderShipped(order_id="1"))
    assert calls == ["all", "exact", "star", "dstar"]
    assert [s.name for s in bus.matching("order.shipped")][1].endswith("<lambda>")


def test_raising_handler_does_not_reach_publisher_or_other_handlers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Bus()
    after: list[str] = []

    def explode(event: Event) -> None:
        raise Boom("card declined")

    bus.subscribe("order.placed", explode, name="billing.charge")
    bus.subscribe("order.placed", lambda e: after.append(e.id))
    event = OrderPlaced(order_id="1")
    with caplog.at_level(logging.ERROR, logger="tidings.bus"):
        bus.publish(event)  # must not raise
    assert after == [event.id]
    assert bus.stats.failed == 1 and bus.stats.dead == 1
    record = caplog.records[-1]
    assert event.id in record.getMessage() and "billing.charge" in record.getMessage()
    [delivery] = bus.deliveries(event_id=event.id)
    assert delivery.status is DeliveryStatus.DEAD
    assert delivery.error == "card declined" and delivery.error_type == "Boom"
    [letter] = bus.dead_letters.list()
    assert letter.event is event and letter.handler == "billing.charge" and letter.attempts == 1
    assert "card declined" in letter.traceback


def test_publish_rejects_non_events_and_bad_patterns() -> None:
    bus = Bus()
    with pytest.raises(TypeError, match="tidings Event"):
        bus.publish({"type": "order.placed"})  # type: ignore[arg-type]
    with pytest.raises(PatternError, match="empty segment"):
        bus.subscribe("order..placed", print)
    with pytest.raises(TypeError, match="callable"):
        bus.subscribe("a", 42)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="mode"):
        Bus(mode="parallel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        Bus(mode="async", workers=0)
    with pytest.raises(ValueError, match="when_full"):
        Bus(when_full="explode")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["inline", "async", "apublish", "tracked"])
def test_bus_source_replaces_only_the_default_source(mode: str) -> None:
    """Bus(source=...) names the service once: events that kept the default source carry it,
    an event that set its own keeps it, on every publish path."""
    bus = Bus(
        mode="async" if mode == "async" else "inline",
        source="billing/api-7",
        track_deliveries=mode == "tracked",
    )
    got: list[Event] = []
    bus.subscribe("order.*", got.append)
    plain, own = OrderPlaced(order_id="1"), OrderPlaced(order_id="2", source="/shop")
    for event in (plain, own):
        if mode == "apublish":
            asyncio.run(bus.apublish(event))
        else:
            bus.publish(event)
    assert bus.close(timeout=5.0).drained
    assert sorted((e.order_id, e.source) for e in got) == [  # type: ignore[attr-defined]
        ("1", "billing/api-7"),
        ("2", "/shop"),
    ]


def test_bus_source_and_subscribe_options_are_checked() -> None:
    with pytest.raises(ValueError, match="source: expected a non-empty string"):
        Bus(source="")
    with pytest.raises(ValueError, match="needs a transport"):
        Bus(subscribe_options=SubscribeOptions(max_in_flight=2))


# --- retries on the fake clock ---------------------------------------------------------------


def test_retry_follows_exact_backoff_schedule_then_succeeds() -> None:
    clock = FakeClock()
    bus = Bus(clock=clock)
    policy = RetryPolicy(max_retries=4, initial_delay=1.0, backoff_factor=2.0, max_delay=5.0)
    attempts: list[float] = []

    def flaky(event: Event) -> None:
        attempts.append(clock.time())
        if len(attempts) < 5:
            raise Boom(f"attempt {len(attempts)}")

    bus.subscribe("order.placed", flaky, retry=policy)
    start = clock.time()
    event = OrderPlaced(order_id="1")
    bus.publish(event)
    assert len(attempts) == 1
    [delivery] = bus.deliveries(event_id=event.id)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.next_attempt_at == pytest.approx(start + 1.0)

    clock.advance(0.999)
    assert len(attempts) == 1  # not a moment early
    clock.advance(30)
    assert [round(t - start, 6) for t in attempts] == [0, 1, 3, 7, 12]
    assert delivery.status is DeliveryStatus.COMPLETED
    assert delivery.attempts == 5 and delivery.retries == 4
    assert bus.stats.retried == 4 and bus.stats.dead == 0
    assert policy.schedule() == [1.0, 2.0, 4.0, 5.0]


def test_retries_exhausted_dead_letter_then_replay() -> None:
    clock = FakeClock()
    bus = Bus(clock=clock, retry=RetryPolicy(max_retries=2, initial_delay=0.5))
    broken = True
    handled: list[str] = []

    def handler(event: Event) -> None:
        if broken:
            raise Boom("downstream down")
        handled.append(event.id)

    bus.subscribe("order.placed", handler, name="projector")
    event = OrderPlaced(order_id="9")
    bus.publish(event)
    clock.advance(10)
    [letter] = bus.dead_letters.list()
    assert letter.attempts == 3 and letter.error == "downstream down"
    assert letter.first_attempt_at is not None and letter.failed_at >= letter.first_attempt_at
    assert bus.deliveries(event_id=event.id)[0].status is DeliveryStatus.DEAD

    broken = False
    assert bus.replay_dead_letters(lambda d: d.handler == "projector") == 1
    assert handled == [event.id]
    assert len(bus.dead_letters) == 0


def test_retry_on_limits_which_errors_are_retried() -> None:
    clock = FakeClock()
    bus = Bus(clock=clock)
    calls = defaultdict(int)

    def handler(event: Event) -> None:
        calls[event.id] += 1
        raise ValueError("permanent") if event.order_id == "bad" else Boom("transient")  # type: ignore[attr-defined]

    bus.subscribe(
        "order.placed", handler, retry=RetryPolicy(max_retries=2, initial_delay=1, retry_on=(Boom,))
    )
    bad, flaky = OrderPlaced(order_id="bad"), OrderPlaced(order_id="ok")
    bus.publish(bad)
    bus.publish(flaky)
    clock.advance(100)
    assert calls[bad.id] == 1 and calls[flaky.id] == 3


def test_dead_letters_can_be_published_as_events() -> None:
    bus = Bus(publish_dead_letters=True)
    notices: list[DeadLettered] = []
    bus.subscribe("tidings.dead_letter", notices.append)

    def fail(event: Event) -> None:
        raise Boom("nope")

    bus.subscribe("order.placed", fail, name="fail")
    event = OrderPlaced(order_id="1")
    bus.publish(event)
    [notice] = notices
    assert notice.event_id == event.id and notice.handler == "fail" and notice.error == "nope"
    assert notice.causation_id == event.id
    assert notice.original["type"] == "order.placed"


def test_dead_letter_queue_is_bounded() -> None:
    bus = Bus(dead_letter_size=3)
    bus.subscribe("order.placed", lambda e: 1 / 0)
    for i in range(5):
        bus.publish(OrderPlaced(order_id=str(i)))
    assert len(bus.dead_letters) == 3 and bus.dead_letters.evicted == 2
    assert [d.event.order_id for d in bus.dead_letters.list()] == ["2", "3", "4"]  # type: ignore[attr-defined]


# --- delivery status -------------------------------------------------------------------------


def test_tracked_delivery_status_moves_pending_processing_completed() -> None:
    bus = Bus(track_deliveries=True)
    observed: list[str] = []

    def handler(event: Event) -> None:
        [d] = bus.deliveries(event_id=event.id)
        observed.append(d.status.value)

    bus.subscribe("order.placed", handler)
    event = OrderPlaced(order_id="1")
    bus.publish(event)
    [delivery] = bus.deliveries(event_id=event.id)
    assert observed == ["processing"]
    assert delivery.status is DeliveryStatus.COMPLETED
    assert delivery.started_at is not None and delivery.finished_at is not None
    assert delivery.created_at <= delivery.started_at <= delivery.finished_at
    assert delivery.as_dict()["status"] == "completed"


def test_untracked_success_records_nothing() -> None:
    bus = Bus()
    bus.subscribe("order.placed", lambda e: None)
    bus.publish(OrderPlaced(order_id="1"))
    assert bus.deliveries() == []


# --- correlation and causation ----------------------------------------------------------------


def test_handler_publishing_gets_correlation_and_causation() -> None:
    bus = Bus()
    children: list[Event] = []

    @bus.subscribe("order.placed")
    def ship(event: OrderPlaced) -> None:
        assert current_event() is event
        bus.publish(OrderShipped(order_id=event.order_id))

    bus.subscribe("order.shipped", children.append)
    root = OrderPlaced(order_id="1")
    bus.publish(root)
    [child] = children
    assert child.causation_id == root.id and child.correlation_id == root.id
    assert current_event() is None

    correlated = OrderPlaced(order_id="2", correlation_id="req-7")
    bus.publish(correlated)
    assert children[-1].correlation_id == "req-7" and children[-1].causation_id == correlated.id

    keep = bus.subscribe(
        "order.placed", lambda e: bus.publish(OrderShipped(order_id="k", correlation_id="mine"))
    )
    parent = OrderPlaced(order_id="4")
    bus.publish(parent)
    assert children[-1].correlation_id == "mine" and children[-1].causation_id == parent.id
    keep.unsubscribe()

    explicit = OrderShipped(order_id="3", causation_id="set-by-user")
    bus.publish(explicit)
    assert explicit.causation_id == "set-by-user"


def test_async_mode_fills_causation_too() -> None:
    with Bus(mode="async", workers=2) as bus:
        children: list[Event] = []
        bus.subscribe("order.placed", lambda e: bus.publish(OrderShipped(order_id="1")))
        bus.subscribe("order.shipped", children.append)
        root = OrderPlaced(order_id="1")
        bus.publish(root)
        assert bus.drain(5)
    assert children[0].causation_id == root.id


# --- asyncio ---------------------------------------------------------------------------------


async def test_apublish_awaits_coroutine_and_plain_handlers_in_order() -> None:
    bus = Bus()
    calls: list[str] = []

    async def slow(event: Event) -> None:
        await asyncio.sleep(0.01)
        calls.append("async")
        await bus.apublish(OrderShipped(order_id="1"))

    bus.subscribe("order.placed", slow)
    bus.subscribe("order.placed", lambda e: calls.append("plain"))
    shipped: list[Event] = []
    bus.subscribe("order.shipped", shipped.append)
    root = OrderPlaced(order_id="1")
    await bus.apublish(root)
    assert calls == ["async", "plain"]
    assert shipped[0].causation_id == root.id


async def test_async_handler_failure_is_recorded_and_retried() -> None:
    bus = Bus(retry=RetryPolicy(max_retries=1, initial_delay=0.01))
    attempts = 0

    async def flaky(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise Boom("first time")

    bus.subscribe("order.placed", flaky)
    await bus.apublish(OrderPlaced(order_id="1"))
    for _ in range(200):
        if attempts == 2:
            break
        await asyncio.sleep(0.01)
    assert attempts == 2
    report = await bus.aclose(2)
    assert report.drained, report.summary()


def test_sync_publish_runs_coroutine_handlers_without_a_loop() -> None:
    bus = Bus()
    seen: list[str] = []

    async def handler(event: Event) -> None:
        await asyncio.sleep(0)
        seen.append(event.id)

    bus.subscribe("order.placed", handler)
    event = OrderPlaced(order_id="1")
    bus.publish(event)
    assert seen == [event.id]


# --- async mode ------------------------------------------------------------------------------


def test_async_mode_keeps_order_per_key_across_4_workers_and_loses_nothing() -> None:
    n, keys = 100_000, 64
    seen: dict[str, list[int]] = defaultdict(list)
    threads: set[str] = set()
    lock = threading.Lock()

    def handler(event: Event) -> None:
        with lock:
            seen[event.aggregate_id or ""].append(event.aggregate_version or 0)
            threads.add(threading.current_thread().name)

    bus = Bus(mode="async", workers=4, buffer_size=10_000)
    bus.subscribe("order.placed", handler)
    for i in range(n):
        bus.publish(OrderPlaced(order_id=str(i), aggregate_id=f"k{i % keys}", aggregate_version=i))
    report = bus.close(timeout=60)
    assert report.drained, report.summary()
    assert sum(len(v) for v in seen.values()) == n
    for versions in seen.values():
        assert versions == sorted(versions)
    assert len(threads) == 4


def test_async_retry_holds_its_key_but_not_other_keys() -> None:
    clock = FakeClock()
    bus = Bus(
        mode="async",
        workers=1,
        clock=clock,
        retry=RetryPolicy(max_retries=1, initial_delay=5),
    )
    handled: list[str] = []
    failed_once: set[str] = set()

    def handler(event: OrderPlaced) -> None:
        if event.order_id == "a1" and "a1" not in failed_once:
            failed_once.add("a1")
            raise Boom("retry me")
        handled.append(event.order_id)

    bus.subscribe("order.placed", handler)
    for key, oid in [("A", "a1"), ("A", "a2"), ("B", "b1"), ("A", "a3"), ("B", "b2")]:
        bus.publish(OrderPlaced(order_id=oid, aggregate_id=key))
    wait_until(lambda: handled == ["b1", "b2"])  # key B is not stalled by A's retry
    time.sleep(0.05)
    assert handled == ["b1", "b2"]  # a2, a3 wait behind a1
    clock.advance(5)
    assert bus.drain(5)
    assert handled == ["b1", "b2", "a1", "a2", "a3"]
    assert bus.close(1).drained


def _blocking_bus(when_full: str) -> tuple[Bus, threading.Event, list[str]]:
    gate = threading.Event()
    done: list[str] = []
    bus = Bus(mode="async", workers=1, buffer_size=2, when_full=when_full)  # type: ignore[arg-type]

    def handler(event: OrderPlaced) -> None:
        gate.wait(5)
        done.append(event.order_id)

    bus.subscribe("order.placed", handler)
    bus.publish(OrderPlaced(order_id="0"))
    wait_until(
        lambda: bus._pool is not None and bus._pool.workers[0].busy and not bus._pool.workers[0].q
    )
    bus.publish(OrderPlaced(order_id="1"))
    bus.publish(OrderPlaced(order_id="2"))  # queue now full (2 waiting)
    return bus, gate, done


def test_full_queue_drop_counts_and_drops() -> None:
    bus, gate, done = _blocking_bus("drop")
    bus.publish(OrderPlaced(order_id="3"))
    bus.publish(OrderPlaced(order_id="4"))
    assert bus.stats.dropped == 2
    gate.set()
    assert bus.close(5).drained
    assert done == ["0", "1", "2"]


def test_full_queue_raise_raises_queue_full() -> None:
    bus, gate, done = _blocking_bus("raise")
    with pytest.raises(BusQueueFull, match="buffer_size"):
        bus.publish(OrderPlaced(order_id="3"))
    gate.set()
    assert bus.close(5).drained
    assert done == ["0", "1", "2"]


def test_full_queue_block_waits_for_space() -> None:
    bus, gate, done = _blocking_bus("block")
    finished = threading.Event()

    def publisher() -> None:
        bus.publish(OrderPlaced(order_id="3"))
        finished.set()

    t = threading.Thread(target=publisher)
    t.start()
    assert not finished.wait(0.2)  # blocked while the queue is full
    gate.set()
    assert finished.wait(5)
    t.join()
    assert bus.close(5).drained
    assert done == ["0", "1", "2", "3"]


async def test_apublish_in_async_mode_waits_for_space_without_blocking_the_loop() -> None:
    bus, gate, done = _blocking_bus("block")
    task = asyncio.create_task(bus.apublish(OrderPlaced(order_id="3")))
    await asyncio.sleep(0.05)
    assert not task.done()  # waiting, and the loop still runs this coroutine
    gate.set()
    await asyncio.wait_for(task, 5)
    assert (await bus.aclose(5)).drained
    assert done == ["0", "1", "2", "3"]


# --- closing ---------------------------------------------------------------------------------


def test_close_drains_in_flight_work() -> None:
    done: list[int] = []
    bus = Bus(mode="async", workers=2, buffer_size=1000)
    bus.subscribe("order.placed", lambda e: (time.sleep(0.001), done.append(1)))
    for i in range(200):
        bus.publish(OrderPlaced(order_id=str(i), aggregate_id=str(i % 7)))
    report = bus.close(timeout=10)
    assert report.drained and report.summary().startswith("drained")
    assert len(done) == 200
    with pytest.raises(BusClosed):
        bus.publish(OrderPlaced(order_id="late"))


def test_close_reports_what_it_could_not_finish(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    bus = Bus(mode="async", workers=1, buffer_size=100)
    bus.subscribe("order.placed", lambda e: gate.wait(2))
    events = [OrderPlaced(order_id=str(i)) for i in range(5)]
    for e in events:
        bus.publish(e)
    with caplog.at_level(logging.WARNING, logger="tidings.bus"):
        report = bus.close(timeout=0.1)
    gate.set()
    assert not report.drained
    assert {e.id for e in report.unfinished_events} <= {e.id for e in events}
    assert len(report.unfinished_events) >= 3
    assert "not drained" in caplog.text


def test_close_cancels_and_reports_pending_retries() -> None:
    clock = FakeClock()
    bus = Bus(clock=clock, retry=RetryPolicy(max_retries=3, initial_delay=60, max_delay=60))
    bus.subscribe("order.placed", lambda e: 1 / 0)
    event = OrderPlaced(order_id="1")
    bus.publish(event)
    report = bus.close(timeout=0.05)
    assert not report.drained
    assert [d.event.id for d in report.pending_retries] == [event.id]
    assert bus.close() is report  # idempotent


def test_bus_is_a_context_manager() -> None:
    with Bus(mode="async", workers=1) as bus:
        seen: list[str] = []
        bus.subscribe("order.placed", lambda e: seen.append(e.id))
        bus.publish(OrderPlaced(order_id="1"))
    assert bus.closed and len(seen) == 1


# --- middleware ------------------------------------------------------------------------------


def test_timeout_fails_a_slow_sync_handler() -> None:
    bus = Bus()
    bus.subscribe("order.placed", lambda e: time.sleep(0.5), timeout=0.05, name="slow")
    event = OrderPlaced(order_id="1")
    bus.publish(event)
    [letter] = bus.dead_letters.list()
    assert letter.error_type == HandlerTimeout.__qualname__ and "0.05s" in letter.error


async def test_timeout_cancels_a_slow_coroutine_handler() -> None:
    bus = Bus()
    cancelled = asyncio.Event()

    async def slow(event: Event) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    bus.subscribe("order.placed", slow, timeout=0.05)
    await bus.apublish(OrderPlaced(order_id="1"))
    assert cancelled.is_set()
    assert bus.dead_letters.list()[0].error_type == "HandlerTimeout"


def test_metrics_hook_sees_every_attempt_and_outcome() -> None:
    outcomes: list[tuple[str, str | None]] = []

    class Hook:
        def on_attempt(
            self, sub: Any, event: Event, seconds: float, error: BaseException | None
        ) -> None:
            assert seconds >= 0
            outcomes.append((sub.name, type(error).__name__ if error else None))

    bus = Bus(metrics=Hook())
    bus.subscribe("order.placed", lambda e: None, name="ok")
    bus.subscribe("order.placed", lambda e: 1 / 0, name="bad")
    bus.publish(OrderPlaced(order_id="1"))
    assert outcomes == [("ok", None), ("bad", "ZeroDivisionError")]


def test_user_middleware_wraps_in_the_order_given() -> None:
    trail: list[str] = []

    class Tag(Middleware):
        def __init__(self, name: str) -> None:
            self.name = name

        def wrap(self, call: Any, sub: Any) -> Any:
            def wrapped(event: Event) -> Any:
                trail.append(f"{self.name}>")
                try:
                    return call(event)
                finally:
                    trail.append(f"<{self.name}")

            return wrapped

    bus = Bus(middleware=[Tag("outer"), Tag("inner")])
    bus.subscribe("order.placed", lambda e: trail.append("handler"))
    bus.publish(OrderPlaced(order_id="1"))
    assert trail == ["outer>", "inner>", "handler", "<inner", "<outer"]


# --- close waits for scheduled retries (issue 9, item 8) ----------------------------------------


class _Attempts:
    """A handler that always raises, counting its attempts by the thread they ran on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.count += 1
        raise Boom(f"attempt {self.count}")


@pytest.mark.parametrize("mode", ["inline", "async"])
def test_close_runs_every_scheduled_retry_before_it_returns(mode: str) -> None:
    bus = Bus(mode, workers=2, retry=RetryPolicy(max_retries=2, initial_delay=0.001))  # type: ignore[arg-type]
    handler = _Attempts()
    bus.subscribe("order.placed", handler, name="always-fails")
    event = OrderPlaced(order_id="1", aggregate_id="k")
    bus.publish(event)
    report = bus.close(timeout=5)
    seen = (handler.count, len(bus.dead_letters), bus.stats.dead)
    assert report.drained, report.summary()
    assert report.pending_retries == []
    # All three attempts and the dead-lettering happened before close returned.
    assert seen == (3, 1, 1), f"at close: (attempts, dead letters, dead) = {seen}"
    assert bus.dead_letters.list()[0].attempts == 3


async def test_aclose_runs_every_scheduled_retry_of_a_coroutine_handler() -> None:
    bus = Bus(retry=RetryPolicy(max_retries=2, initial_delay=0.001))
    attempts = 0

    async def always_fails(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        raise Boom(f"attempt {attempts}")

    bus.subscribe("order.placed", always_fails)
    await bus.apublish(OrderPlaced(order_id="1"))
    report = await bus.aclose(5)
    seen = (attempts, len(bus.dead_letters))
    assert report.drained, report.summary()
    assert seen == (3, 1), f"at aclose: (attempts, dead letters) = {seen}"


def test_close_reports_a_running_retry_and_no_handler_runs_after_it_returns() -> None:
    """A retry still running at the deadline is reported, and its failure schedules nothing."""
    clock = FakeClock()
    bus = Bus(clock=clock, retry=RetryPolicy(max_retries=3, initial_delay=1, max_delay=1))
    gate = threading.Event()
    entered = threading.Event()
    attempts = 0

    def handler(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:  # the first retry hangs until the test lets it go
            entered.set()
            gate.wait(10)
        raise Boom(f"attempt {attempts}")

    bus.subscribe("order.placed", handler)
    event = OrderPlaced(order_id="1")
    bus.publish(event)
    firing = threading.Thread(target=clock.advance, args=(1,))  # the timer thread of a real clock
    firing.start()
    assert entered.wait(5)
    report = bus.close(timeout=0.1)
    gate.set()
    firing.join(5)
    assert not report.drained
    assert report.running_tasks == 1, report
    assert report.pending_retries == []
    # The hung retry failed after close returned: nothing is scheduled, nothing runs again.
    assert clock.pending() == 0, "a retry was scheduled after close() returned"
    clock.advance(60)
    assert attempts == 2


def test_close_reports_retries_queued_for_async_workers() -> None:
    """A retry handed to a worker queue but not run by the deadline is a pending retry."""
    clock = FakeClock()
    gate = threading.Event()
    bus = Bus("async", workers=1, clock=clock, retry=RetryPolicy(max_retries=3, initial_delay=1))
    failed: list[str] = []

    def handler(event: OrderPlaced) -> None:
        if event.order_id == "block":
            gate.wait(10)
            return
        failed.append(event.order_id)
        raise Boom("retry me")

    bus.subscribe("order.placed", handler)
    failing = OrderPlaced(order_id="fails", aggregate_id="a")
    bus.publish(failing)
    wait_until(lambda: clock.pending() == 1)
    bus.publish(OrderPlaced(order_id="block", aggregate_id="b"))
    wait_until(
        lambda: bus._pool is not None and bus._pool.workers[0].busy and not bus._pool.workers[0].q
    )
    clock.advance(1)  # the retry goes to the worker's queue, behind the blocked handler
    report = bus.close(timeout=0.1)
    gate.set()
    assert [(d.event.id, d.attempts) for d in report.pending_retries] == [(failing.id, 1)], report
    assert not report.drained
    assert failed == ["fails"]
