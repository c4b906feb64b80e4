"""Bus(transport=...) end to end over the in-process memory transport.

The same publish/subscribe code as the in-process bus, but every event goes through a broker:
sync and async handlers, groups across buses, follow-up events, draining on close, and what a
close with a hung handler leaves for the group.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tidings import Bus, Event, RetryPolicy, Subscription
from tidings.bus import BusClosed
from tidings.transport import SubscribeOptions, TransportError
from tidings.transports.memory import MemoryTransport


class Placed(Event, type="bt.order.placed"):
    order_id: str


class Shipped(Event, type="bt.order.shipped"):
    order_id: str


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the condition")
        time.sleep(0.005)


@pytest.fixture
def url() -> str:
    return f"memory://bt-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bus(url: str) -> Iterator[Bus]:
    b = Bus(transport=url)
    yield b
    b.close(timeout=2.0)


def test_sync_and_async_handlers_in_both_subscribe_forms(bus: Bus) -> None:
    sync_got: list[str] = []
    async_got: list[str] = []

    @bus.subscribe("bt.order.*")
    def on_order(event: Event) -> None:
        sync_got.append(event.type)

    async def on_placed(event: Placed) -> None:
        await asyncio.sleep(0)
        async_got.append(event.order_id)

    sub = bus.subscribe("bt.order.placed", on_placed)
    assert isinstance(on_order, Subscription) and isinstance(sub, Subscription)
    assert on_order.remote is not None and sub.remote is not None
    bus.publish(Placed(order_id="o1", aggregate_id="o1"))
    bus.publish_many([Shipped(order_id="o1", aggregate_id="o1")])
    wait_until(lambda: len(sync_got) == 2 and async_got == ["o1"])
    assert sync_got == ["bt.order.placed", "bt.order.shipped"]

    assert sub.unsubscribe() is True
    assert sub.unsubscribe() is False
    bus.publish(Placed(order_id="o2"))
    wait_until(lambda: len(sync_got) == 3)
    time.sleep(0.05)
    assert async_got == ["o1"], "an unsubscribed handler still got events"
    assert bus.subscriptions() == [on_order]


def test_handler_receives_a_decoded_typed_copy(bus: Bus) -> None:
    got: list[Event] = []
    bus.subscribe("bt.order.placed", got.append)
    sent = Placed(order_id="o9", tenant_id="t1")
    bus.publish(sent)
    wait_until(lambda: len(got) == 1)
    assert isinstance(got[0], Placed)
    assert got[0] == sent and got[0] is not sent


async def test_apublish_from_a_running_loop_and_from_a_handler(url: str) -> None:
    bus = Bus(transport=url)
    seen: list[Event] = []
    try:

        async def place_then_ship(event: Placed) -> None:
            await bus.apublish(Shipped(order_id=event.order_id))  # on the transport loop

        bus.subscribe("bt.order.placed", place_then_ship)
        bus.subscribe("bt.order.shipped", seen.append)
        parent = Placed(order_id="o1")
        await bus.apublish(parent)  # from this test's own loop: another thread's loop
        for _ in range(500):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert [e.order_id for e in seen] == ["o1"]  # type: ignore[attr-defined]
        assert seen[0].causation_id == parent.id
        assert seen[0].correlation_id == (parent.correlation_id or parent.id)
    finally:
        await bus.aclose(2.0)


def test_sync_handler_publishes_follow_ups_with_causation(bus: Bus) -> None:
    shipped: list[Event] = []

    @bus.subscribe("bt.order.placed")
    def ship(event: Placed) -> None:
        bus.publish(Shipped(order_id=event.order_id))  # blocks this worker thread only

    bus.subscribe("bt.order.shipped", shipped.append)
    parent = Placed(order_id="o7")
    bus.publish(parent)
    wait_until(lambda: len(shipped) == 1)
    assert shipped[0].causation_id == parent.id


def test_sync_publish_from_an_async_handler_does_not_deadlock(bus: Bus) -> None:
    shipped: list[Event] = []

    async def ship(event: Placed) -> None:
        bus.publish(Shipped(order_id=event.order_id))  # on the loop: sent as a task

    bus.subscribe("bt.order.placed", ship)
    bus.subscribe("bt.order.shipped", shipped.append)
    bus.publish(Placed(order_id="o3"))
    wait_until(lambda: len(shipped) == 1)


def test_group_members_on_two_buses_split_the_events(url: str) -> None:
    a, b = Bus(transport=url, group="billing"), Bus(transport=url, group="billing")
    publisher = Bus(transport=url)
    got_a: list[str] = []
    got_b: list[str] = []
    lock = threading.Lock()

    def record(into: list[str]) -> Callable[[Event], None]:
        def handler(event: Event) -> None:
            with lock:
                into.append(event.id)

        return handler

    try:
        a.subscribe("bt.order.*", record(got_a))
        b.subscribe("bt.order.*", record(got_b))
        events = [Placed(order_id=str(i), aggregate_id=f"o{i % 16}") for i in range(200)]
        publisher.publish_many(events)
        wait_until(lambda: len(got_a) + len(got_b) >= 200)
        time.sleep(0.05)
        both = Counter(got_a + got_b)
        assert set(both) == {e.id for e in events}
        assert max(both.values()) == 1, "an event reached the group twice"
        assert got_a and got_b, "one member got everything"
    finally:
        for x in (a, b, publisher):
            x.close(2.0)


def test_broadcast_buses_each_get_every_event(url: str) -> None:
    subscribers = [Bus(transport=url), Bus(transport=url)]
    publisher = Bus(transport=url)
    counts = [0, 0]

    def counter(i: int) -> Callable[[Event], None]:
        def handler(event: Event) -> None:
            counts[i] += 1

        return handler

    try:
        for i, sb in enumerate(subscribers):
            sb.subscribe("bt.**", counter(i))
        for n in range(50):
            publisher.publish(Placed(order_id=str(n)))
        wait_until(lambda: counts == [50, 50])
    finally:
        for x in (*subscribers, publisher):
            x.close(2.0)


def test_failing_handler_is_retried_then_dead_lettered_in_the_transport(bus: Bus) -> None:
    attempts = 0

    @bus.subscribe("bt.order.placed", retry=RetryPolicy(max_retries=2, initial_delay=0.01))
    def refuse(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("warehouse offline")

    sent = Placed(order_id="o1")
    bus.publish(sent)
    transport = bus.transport
    assert transport is not None and refuse.remote is not None
    name = refuse.remote.name

    wait_until(lambda: len(bus.run_on_transport(transport.dead_letters(name))) == 1)
    assert attempts == 3
    letter = bus.run_on_transport(transport.dead_letters(name))[0]
    assert letter.event_id == sent.id and "warehouse offline" in letter.error
    assert bus.run_on_transport(transport.replay_dead_letters(name)) == 1
    wait_until(lambda: attempts == 6)


def test_close_drains_in_flight_handlers(url: str) -> None:
    bus = Bus(transport=url)
    started = threading.Event()
    done: list[str] = []

    @bus.subscribe("bt.order.placed")
    async def slow(event: Event) -> None:
        started.set()
        await asyncio.sleep(0.2)
        done.append(event.id)

    sent = Placed(order_id="o1")
    bus.publish(sent)
    assert started.wait(5)
    report = bus.close(timeout=5.0)
    assert report.drained, report.summary()
    assert done == [sent.id]
    assert bus.close() is report
    with pytest.raises(BusClosed):
        bus.publish(Placed(order_id="late"))


def test_close_reports_a_hung_handler_and_the_group_gets_its_event_again(url: str) -> None:
    dying = Bus(transport=url, group="g")
    survivor = Bus(transport=url, group="g")
    took = threading.Event()
    got: list[str] = []
    opts = SubscribeOptions(ack_wait=0.3)

    async def hang(event: Event) -> None:
        took.set()
        await asyncio.Event().wait()

    try:
        dying.subscribe("bt.order.placed", hang, options=opts)
        sent = Placed(order_id="o1", aggregate_id="o1")
        dying.publish(sent)
        assert took.wait(5)
        survivor.subscribe("bt.order.placed", lambda e: got.append(e.id), options=opts)
        report = dying.close(timeout=0.1)
        assert not report.drained
        assert [e.id for e in report.unfinished_events] == [sent.id]
        assert "1 queued event(s) not handled" in report.summary()
        wait_until(lambda: got == [sent.id], 5)
    finally:
        survivor.close(2.0)


def test_bus_accepts_a_transport_object_and_bad_configuration_is_clear(url: str) -> None:
    transport = MemoryTransport(url)
    bus = Bus(transport=transport)
    try:
        assert bus.transport is transport
        assert transport.health().ok
    finally:
        bus.close(1.0)
    assert not transport.health().ok

    threads = threading.active_count()
    with pytest.raises(TransportError, match="unknown scheme"):
        Bus(transport="nope://somewhere")
    with pytest.raises(ValueError, match="needs a transport"):
        Bus(group="g")
    with pytest.raises(ValueError, match="mode='async'"):
        Bus(mode="async", transport=url)
    with pytest.raises(ValueError, match="needs a transport"):
        Bus().subscribe("a", print, group="g")
    with pytest.raises(ValueError, match="transport_options"):
        Bus(transport=MemoryTransport(url), transport_options={"buffer_size": 1})
    assert threading.active_count() <= threads, "a failed Bus left its loop thread running"


def test_publish_rejects_what_is_not_an_event(bus: Bus) -> None:
    with pytest.raises(TypeError, match="tidings Event"):
        bus.publish({"type": "x"})  # type: ignore[arg-type]


def test_in_process_bus_is_untouched_without_a_transport() -> None:
    bus = Bus()
    assert bus.transport is None
    with pytest.raises(ValueError, match="needs a transport"):
        bus.run_on_transport(asyncio.sleep(0))
    assert "publish" not in vars(bus), "the in-process bus must keep its class methods"
    got: list[str] = []
    bus.subscribe("x.y", lambda e: got.append(e.type))
    bus.publish(Event(type="x.y"))
    assert got == ["x.y"]


def test_drain_waits_for_transport_handlers(bus: Bus) -> None:
    done: list[int] = []

    @bus.subscribe("bt.order.placed", options=SubscribeOptions(max_in_flight=2))
    def slow(event: Placed) -> None:
        time.sleep(0.01)
        done.append(1)

    for i in range(10):
        bus.publish(Placed(order_id=str(i), aggregate_id=f"o{i}"))
    assert bus.drain(0.001) is False
    assert bus.drain(5) is True
    assert len(done) == 10


def test_blocking_calls_inside_a_coroutine_handler_are_refused_clearly(bus: Bus) -> None:
    errors: list[str] = []

    async def subscribes_inside(event: Event) -> None:
        try:
            bus.subscribe("bt.other", print)
        except RuntimeError as exc:
            errors.append(str(exc))

    bus.subscribe("bt.order.placed", subscribes_inside)
    bus.publish(Placed(order_id="o1"))
    wait_until(lambda: len(errors) == 1)
    assert "cannot run inside a coroutine handler" in errors[0]
    assert [s.pattern.text for s in bus.subscriptions()] == ["bt.order.placed"]


def test_close_waits_for_the_transports_retries(url: str) -> None:
    """Issue 9, item 8: every retry (and the dead letter) happens before close returns."""
    bus = Bus(transport=url, retry=RetryPolicy(max_retries=2, initial_delay=0.001))
    attempts = 0
    started = threading.Event()

    @bus.subscribe("bt.order.placed")
    def refuse(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        started.set()
        raise RuntimeError("warehouse offline")

    bus.publish(Placed(order_id="o1"))
    assert started.wait(5)
    report = bus.close(timeout=5.0)
    assert report.drained, report.summary()
    assert attempts == 3


def test_close_reports_a_retry_it_could_not_wait_for(url: str) -> None:
    bus = Bus(transport=url, retry=RetryPolicy(max_retries=3, initial_delay=30, max_delay=30))
    attempts = 0
    failed = threading.Event()

    @bus.subscribe("bt.order.placed")
    def refuse(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        failed.set()
        raise RuntimeError("warehouse offline")

    sent = Placed(order_id="o1")
    bus.publish(sent)
    assert failed.wait(5)
    report = bus.close(timeout=0.2)
    assert not report.drained, report.summary()
    assert [(d.event.id, d.attempts) for d in report.pending_retries] == [(sent.id, 1)]
    assert "1 retry(ies) cancelled" in report.summary()
    assert attempts == 1


def test_bus_source_and_default_subscribe_options_reach_the_broker(url: str) -> None:
    """Bus(source=..., subscribe_options=...) over a transport: the events the broker carries
    have the bus's source unless they set their own, and subscribe() without options gets the
    bus's (with one, that one)."""
    bus = Bus(
        transport=url, source="shop/api-2", subscribe_options=SubscribeOptions(max_in_flight=3)
    )
    got: list[Event] = []
    try:
        default = bus.subscribe("bt.order.*", got.append)
        own = bus.subscribe(
            "bt.order.shipped", lambda e: None, options=SubscribeOptions(max_in_flight=7)
        )
        assert default.remote is not None and own.remote is not None
        assert default.remote.options.max_in_flight == 3  # type: ignore[attr-defined]
        assert own.remote.options.max_in_flight == 7  # type: ignore[attr-defined]
        bus.publish(Placed(order_id="1"))
        bus.publish_many([Shipped(order_id="2", source="/warehouse")])
        wait_until(lambda: len(got) == 2, 30)
    finally:
        assert bus.close(timeout=5.0).drained
    assert sorted((e.type, e.source) for e in got) == [
        ("bt.order.placed", "shop/api-2"),
        ("bt.order.shipped", "/warehouse"),
    ]
