"""The testing kit: RecordingBus, NoopBus, FakeClock and the pytest plugin's fixtures."""

from __future__ import annotations

import threading

import pytest

from tidings import Bus, Event, RetryPolicy
from tidings.bus import BusClosed
from tidings.testing import FakeClock, NoopBus, RecordingBus

pytest_plugins = ["pytester"]


class OrderPlaced(Event, type="testing.order.placed"):
    order_id: str
    total: int


class OrderShipped(Event, type="testing.order.shipped"):
    order_id: str


def test_recording_bus_records_in_order_and_still_delivers() -> None:
    bus = RecordingBus()
    seen: list[str] = []
    bus.subscribe("testing.order.placed", lambda e: seen.append(e.order_id))
    bus.publish(OrderPlaced(order_id="o1", total=3))
    bus.publish(OrderShipped(order_id="o1"))
    assert [e.type for e in bus.events] == ["testing.order.placed", "testing.order.shipped"]
    assert seen == ["o1"]
    assert bus.has_event("testing.order.shipped")
    assert not bus.has_event("testing.order.cancelled")


def test_events_of_type_by_name_pattern_and_class() -> None:
    bus = RecordingBus()
    bus.publish(OrderPlaced(order_id="o1", total=3))
    bus.publish(OrderShipped(order_id="o1"))
    bus.publish(Event(type="other.thing"))
    assert len(bus.events_of_type("testing.order.placed")) == 1
    assert len(bus.events_of_type("testing.order.*")) == 2
    assert len(bus.events_of_type("**")) == 3
    assert [e.order_id for e in bus.events_of_type(OrderShipped)] == ["o1"]


def test_assert_published_matches_fields_and_returns_the_event() -> None:
    bus = RecordingBus()
    bus.publish(OrderPlaced(order_id="o1", total=3))
    bus.publish(OrderPlaced(order_id="o2", total=5))
    found = bus.assert_published("testing.order.placed", order_id="o2")
    assert found.total == 5
    assert bus.assert_published(OrderPlaced, total=3).order_id == "o1"
    bus.publish(Event(type="plain", data={"status": "ok"}))
    bus.assert_published("plain", status="ok")


def test_assert_published_failures_say_what_was_seen() -> None:
    bus = RecordingBus()
    with pytest.raises(AssertionError, match=r"no testing\.order\.placed event was published"):
        bus.assert_published("testing.order.placed")
    bus.publish(OrderPlaced(order_id="o1", total=3))
    with pytest.raises(AssertionError, match=r"none with order_id='zz'.*order_id='o1'"):
        bus.assert_published("testing.order.placed", order_id="zz")
    with pytest.raises(AssertionError, match=r"expected no testing\.order\.placed event, 1 were"):
        bus.assert_not_published("testing.order.placed")
    bus.assert_not_published(OrderShipped)


def test_clear_forgets_recorded_events() -> None:
    bus = RecordingBus()
    bus.publish(OrderShipped(order_id="o1"))
    bus.clear()
    assert bus.events == []
    bus.assert_not_published("**")


def test_recording_bus_records_follow_up_events_with_causation() -> None:
    bus = RecordingBus()

    @bus.subscribe("testing.order.placed")
    def ship(event: OrderPlaced) -> None:
        bus.publish(OrderShipped(order_id=event.order_id))

    placed = OrderPlaced(order_id="o9", total=1)
    bus.publish(placed)
    shipped = bus.assert_published(OrderShipped, order_id="o9")
    assert shipped.causation_id == placed.id
    assert shipped.correlation_id == placed.correlation_id or placed.id


def test_recording_bus_is_thread_safe() -> None:
    bus = RecordingBus()

    def burst() -> None:
        for i in range(2000):
            bus.publish(OrderShipped(order_id=str(i)))

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(bus.events) == 8000


async def test_recording_bus_records_apublish() -> None:
    bus = RecordingBus()
    got: list[str] = []

    async def handler(event: OrderShipped) -> None:
        got.append(event.order_id)

    bus.subscribe("testing.order.shipped", handler)
    await bus.apublish(OrderShipped(order_id="a"))
    assert got == ["a"]
    bus.assert_published(OrderShipped, order_id="a")


def test_recording_bus_rejects_non_events() -> None:
    with pytest.raises(TypeError, match="expects a tidings Event, got dict"):
        RecordingBus().publish({"type": "x"})  # type: ignore[arg-type]


async def test_noop_bus_counts_and_delivers_nothing() -> None:
    bus = NoopBus()
    called: list[Event] = []
    bus.subscribe("**", called.append)
    bus.publish(OrderShipped(order_id="1"))
    await bus.apublish(OrderShipped(order_id="2"))
    assert bus.publish_count == 2
    assert called == []
    bus.close()
    with pytest.raises(BusClosed):
        bus.publish(OrderShipped(order_id="3"))


def test_fake_clock_runs_due_timers_in_order_including_cascades() -> None:
    clock = FakeClock()
    ran: list[tuple[str, float]] = []
    clock.call_later(2.0, lambda: ran.append(("b", clock.monotonic())))
    clock.call_later(1.0, lambda: ran.append(("a", clock.monotonic())))

    def chain() -> None:
        ran.append(("c", clock.monotonic()))
        clock.call_later(0.5, lambda: ran.append(("d", clock.monotonic())))

    clock.call_later(1.5, chain)
    late = clock.call_later(10.0, lambda: ran.append(("late", clock.monotonic())))
    assert clock.pending() == 4
    assert clock.advance(2.0) == 4
    assert ran == [("a", 1.0), ("c", 1.5), ("b", 2.0), ("d", 2.0)]
    assert clock.monotonic() == 2.0
    assert clock.pending() == 1
    late.cancel()
    assert clock.advance(100) == 0
    assert clock.delays == [2.0, 1.0, 1.5, 10.0, 0.5]


def test_fake_clock_wall_time_moves_with_monotonic() -> None:
    clock = FakeClock(start=1000.0)
    clock.advance(2.5)
    assert clock.time() == 1002.5
    with pytest.raises(ValueError, match="seconds >= 0"):
        clock.advance(-1)


def test_fake_clock_drives_exact_bus_retry_schedule() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_retries=3, initial_delay=0.1, backoff_factor=2.0, jitter=0.0)
    bus = Bus(clock=clock, retry=policy)
    times: list[float] = []

    @bus.subscribe("testing.order.placed")
    def always_fails(event: OrderPlaced) -> None:
        times.append(clock.monotonic())
        raise RuntimeError("nope")

    bus.publish(OrderPlaced(order_id="o1", total=1))
    clock.advance(10)
    assert times == pytest.approx([0.0, 0.1, 0.3, 0.7])
    assert len(bus.dead_letters.list()) == 1


def test_plugin_fixtures_are_available_to_users(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        from tidings import Event, RetryPolicy
        from tidings.testing import NoopBus, RecordingBus

        def test_recording(recording_bus):
            assert isinstance(recording_bus, RecordingBus)
            recording_bus.publish(Event(type="user.signed_up", data={"id": 1}))
            recording_bus.assert_published("user.signed_up", id=1)

        def test_noop(noop_bus):
            noop_bus.publish(Event(type="x"))
            assert noop_bus.publish_count == 1

        def test_clock_drives_recording_bus(recording_bus, fake_clock):
            calls = []
            def flaky(event):
                calls.append(fake_clock.monotonic())
                if len(calls) < 2:
                    raise ValueError("first time fails")
            recording_bus.subscribe("x", flaky, retry=RetryPolicy(max_retries=1,
                                    initial_delay=5.0, jitter=0.0))
            recording_bus.publish(Event(type="x"))
            fake_clock.advance(5.0)
            assert calls == [0.0, 5.0]

        def test_factory(bus_factory):
            bus = bus_factory(mode="async", workers=2)
            got = []
            bus.subscribe("x", got.append)
            bus.publish(Event(type="x"))
            assert bus.drain(5.0)
            assert len(got) == 1
        """
    )
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
