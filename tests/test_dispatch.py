"""The shared Dispatcher on its own: the consumer semantics every transport inherits.

Messages are built here by hand (no broker), each with ack/nack callables that record what the
dispatcher decided, so every rule is checked where it is made.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tidings.event import Event, EventError, decode, encode
from tidings.retry import RetryPolicy
from tidings.transport import DeadMessage, Inbound, SubscribeOptions
from tidings.transports.dispatch import Dispatcher
from tidings.transports.memory import MemoryTransport


class Ledger:
    """Records acks, nacks and dead letters; can be told to fail them."""

    def __init__(self) -> None:
        self.acked: list[str] = []
        self.nacked: list[str] = []
        self.dead: list[DeadMessage] = []
        self.errors: list[BaseException] = []
        self.fail_ack = False
        self.fail_dead = False

    def message(self, key: str | None = None, **data: object) -> Inbound:
        event = Event(type="d.x", aggregate_id=key, data=data or None)

        async def ack() -> None:
            if self.fail_ack:
                raise ConnectionError("broker went away")
            self.acked.append(event.id)

        async def nack() -> None:
            self.nacked.append(event.id)

        return Inbound(raw=encode(event), event=event, ack=ack, nack=nack)

    def undecodable(self, raw: bytes) -> Inbound:
        async def ack() -> None:
            self.acked.append("raw")

        async def nack() -> None:
            self.nacked.append("raw")

        return Inbound(raw=raw, event=None, ack=ack, nack=nack, decode_error="not JSON")

    async def store_dead(self, dm: DeadMessage) -> None:
        if self.fail_dead:
            raise OSError("dead-letter table is full")
        self.dead.append(dm)

    def dispatcher(self, handler: object, **opts: object) -> Dispatcher:
        return Dispatcher(
            "sub-1",
            handler,  # type: ignore[arg-type]
            SubscribeOptions(**opts),  # type: ignore[arg-type]
            self.store_dead,
            on_error=self.errors.append,
        )


FAST = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.01)


async def test_order_per_key_and_overlap_across_keys() -> None:
    ledger = Ledger()
    seen: dict[str, list[int]] = defaultdict(list)
    running: set[str] = set()
    overlap = 0

    async def handler(event: Event) -> None:
        nonlocal overlap
        key = event.aggregate_id
        assert key is not None and key not in running, "two of one key ran at once"
        running.add(key)
        overlap = max(overlap, len(running))
        await asyncio.sleep(0.001 * (event.data["n"] % 3))
        seen[key].append(event.data["n"])
        running.discard(key)

    d = ledger.dispatcher(handler, max_in_flight=8)
    for n in range(200):
        await d.submit(ledger.message(key=f"k{n % 5}", n=n))
    assert await d.drain(10)
    for k in range(5):
        assert seen[f"k{k}"] == list(range(k, 200, 5))
    assert overlap > 1
    assert len(ledger.acked) == 200 and d.stats.handled == 200 and d.in_flight == 0


async def test_in_flight_bound_makes_submit_wait() -> None:
    ledger = Ledger()
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def handler(event: Event) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    d = ledger.dispatcher(handler, max_in_flight=3)
    for i in range(3):
        await d.submit(ledger.message(key=f"k{i}"))
    blocked = asyncio.create_task(d.submit(ledger.message(key="k3")))
    await asyncio.sleep(0.05)
    assert d.in_flight == 3
    assert not blocked.done(), "a 4th message was taken with max_in_flight=3"
    gate.set()
    await asyncio.wait_for(blocked, 1)
    assert await d.drain(1)
    assert peak == 3 and len(ledger.acked) == 4


async def test_keyless_messages_run_concurrently() -> None:
    ledger = Ledger()
    running = 0
    peak = 0

    async def handler(event: Event) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    d = ledger.dispatcher(handler, max_in_flight=4)
    for _ in range(8):
        await d.submit(ledger.message())
    assert await d.drain(2)
    assert peak == 4


async def test_retry_parks_only_its_key() -> None:
    ledger = Ledger()
    order: list[str] = []
    failures = {"a1": 2}

    async def handler(event: Event) -> None:
        tag = event.data["tag"]
        if failures.get(tag, 0) > 0:
            failures[tag] -= 1
            order.append(f"{tag}!")
            raise RuntimeError("not yet")
        order.append(tag)

    policy = RetryPolicy(max_retries=3, initial_delay=0.1, max_delay=0.1)
    d = ledger.dispatcher(handler, retry=policy)
    await d.submit(ledger.message(key="a", tag="a1"))
    await d.submit(ledger.message(key="a", tag="a2"))
    await d.submit(ledger.message(key="b", tag="b1"))
    await asyncio.sleep(0.05)
    assert order == ["a1!", "b1"], "another key waited for a retrying one"
    assert await d.drain(2)
    assert order == ["a1!", "b1", "a1!", "a1", "a2"], "a later message of the key overtook"
    assert d.stats.retried == 2 and d.stats.failed == 2 and d.stats.handled == 3
    assert len(ledger.acked) == 3 and not ledger.dead


async def test_exhausted_retries_dead_letter_then_ack() -> None:
    ledger = Ledger()
    calls = 0

    def handler(event: Event) -> None:  # sync handlers are called directly
        nonlocal calls
        calls += 1
        raise ValueError("bad amount")

    d = ledger.dispatcher(handler, retry=FAST)
    msg = ledger.message(key="k")
    await d.submit(msg)
    assert await d.drain(2)
    assert calls == 3
    assert len(ledger.dead) == 1
    dm = ledger.dead[0]
    assert msg.event is not None
    assert dm.subscription == "sub-1" and dm.event_id == msg.event.id and dm.attempts == 3
    assert dm.error == "ValueError: bad amount" and dm.raw == msg.raw
    assert ledger.acked == [msg.event.id] and not ledger.nacked
    assert d.stats.dead == 1 and len(ledger.errors) == 3


async def test_retry_on_decides_what_is_retried() -> None:
    ledger = Ledger()
    calls = 0

    async def handler(event: Event) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("permanent")

    policy = RetryPolicy(max_retries=5, initial_delay=0.01, retry_on=(ConnectionError,))
    d = ledger.dispatcher(handler, retry=policy)
    await d.submit(ledger.message())
    assert await d.drain(2)
    assert calls == 1 and len(ledger.dead) == 1


async def test_dead_letter_store_failure_nacks_instead_of_acking() -> None:
    ledger = Ledger()
    ledger.fail_dead = True

    async def handler(event: Event) -> None:
        raise RuntimeError("nope")

    d = ledger.dispatcher(handler, retry=RetryPolicy.none())
    msg = ledger.message()
    await d.submit(msg)
    assert await d.drain(2)
    assert msg.event is not None
    assert ledger.nacked == [msg.event.id] and not ledger.acked
    assert d.stats.dead == 0
    assert any(isinstance(e, OSError) for e in ledger.errors)


async def test_ack_errors_are_counted_and_reported() -> None:
    ledger = Ledger()
    ledger.fail_ack = True
    d = ledger.dispatcher(lambda e: None)
    await d.submit(ledger.message())
    assert await d.drain(2)
    assert d.stats.handled == 1 and d.stats.ack_errors == 1
    assert len(ledger.errors) == 1 and isinstance(ledger.errors[0], ConnectionError)


async def test_undecodable_message_is_dead_lettered_without_calling_the_handler() -> None:
    ledger = Ledger()
    called = False

    def handler(event: Event) -> None:
        nonlocal called
        called = True

    d = ledger.dispatcher(handler)
    await d.submit(ledger.undecodable(b"\x00garbage"))
    assert await d.drain(2)
    assert not called
    assert d.stats.undecodable == 1 and d.stats.dead == 1
    assert ledger.dead[0].raw == b"\x00garbage" and ledger.dead[0].attempts == 0
    assert ledger.dead[0].event_id is None and ledger.acked == ["raw"]


async def test_close_leaves_unfinished_messages_unacked() -> None:
    ledger = Ledger()
    started = asyncio.Event()

    async def hang(event: Event) -> None:
        started.set()
        await asyncio.Event().wait()

    d = ledger.dispatcher(hang, max_in_flight=4)
    await d.submit(ledger.message(key="a"))
    await d.submit(ledger.message(key="a"))  # queued behind it in the lane
    await d.submit(ledger.message(key="b"))
    await started.wait()
    assert await d.drain(0.05) is False
    left = await d.close(timeout=0.1)
    assert left == 3
    assert not ledger.acked and not ledger.nacked, "close settled unfinished messages"


async def test_close_waits_for_handlers_that_finish_in_time() -> None:
    ledger = Ledger()

    async def slow(event: Event) -> None:
        await asyncio.sleep(0.1)

    d = ledger.dispatcher(slow)
    await d.submit(ledger.message())
    assert await d.close(timeout=2) == 0
    assert len(ledger.acked) == 1


async def test_a_raising_on_error_callback_does_not_stall_the_lane() -> None:
    ledger = Ledger()

    def bad_callback(exc: BaseException) -> None:
        raise RuntimeError("callback bug")

    async def handler(event: Event) -> None:
        if event.data and event.data.get("fail"):
            raise ValueError("handler fails")

    d = Dispatcher(
        "sub-2",
        handler,
        SubscribeOptions(retry=RetryPolicy.none()),
        ledger.store_dead,
        bad_callback,
    )
    await d.submit(ledger.message(key="k", fail=True))
    await d.submit(ledger.message(key="k"))
    assert await d.drain(2)
    assert len(ledger.dead) == 1 and len(ledger.acked) == 2


@pytest.mark.parametrize("n", [0, -1, True])
def test_max_in_flight_must_be_positive(n: int) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        SubscribeOptions(max_in_flight=n)


# ---- the worker pool: concurrency, hand-offs and failures of the machinery -----------------


async def test_async_handlers_reach_max_in_flight_across_keys_and_keep_order() -> None:
    ledger = Ledger()
    running = 0
    peak = 0
    seen: dict[str, list[int]] = defaultdict(list)

    async def handler(event: Event) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.002)
        seen[event.aggregate_id or ""].append(event.data["n"])
        running -= 1

    d = ledger.dispatcher(handler, max_in_flight=16)
    for n in range(400):
        await d.submit(ledger.message(key=f"k{n % 40}", n=n))
    assert await d.drain(10)
    assert peak == 16, f"only {peak} of 16 handlers ran at once over 40 keys"
    for k in range(40):
        assert seen[f"k{k}"] == list(range(k, 400, 40))
    assert len(ledger.acked) == 400 and d.in_flight == 0


async def test_sync_handlers_return_values_are_ignored_and_awaitables_awaited() -> None:
    ledger = Ledger()
    done: list[str] = []

    async def later(tag: str) -> None:
        await asyncio.sleep(0)
        done.append(tag)

    def handler(event: Event) -> object:
        tag = event.data["tag"]
        if tag == "future":  # a sync handler handing back an awaitable: awaited before the ack
            return later(tag)
        done.append(tag)
        return 42  # not awaitable: ignored

    d = ledger.dispatcher(handler)
    await d.submit(ledger.message(tag="plain"))
    await d.submit(ledger.message(tag="future"))
    assert await d.drain(2)
    assert sorted(done) == ["future", "plain"] and len(ledger.acked) == 2


async def test_try_submit_takes_only_while_a_slot_is_free() -> None:
    ledger = Ledger()
    gate = asyncio.Event()

    async def handler(event: Event) -> None:
        await gate.wait()

    d = ledger.dispatcher(handler, max_in_flight=2)
    assert d.try_submit(ledger.message(key="a"))
    assert d.try_submit(ledger.message(key="a"))
    third = ledger.message(key="b")
    assert not d.try_submit(third), "try_submit went past max_in_flight"
    assert d.in_flight == 2 and d.stats.received == 2
    gate.set()
    await d.submit(third)
    assert await d.drain(2)
    assert len(ledger.acked) == 3


async def test_waiting_submitters_are_served_in_order() -> None:
    ledger = Ledger()
    gate = asyncio.Event()
    seen: list[int] = []

    async def handler(event: Event) -> None:
        await gate.wait()
        seen.append(event.data["n"])

    d = ledger.dispatcher(handler, max_in_flight=1)
    await d.submit(ledger.message(key="k", n=0))
    waiting = []
    for n in range(1, 6):  # five producers, each blocked on the full dispatcher, in this order
        waiting.append(asyncio.create_task(d.submit(ledger.message(key="k", n=n))))
        await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(asyncio.gather(*waiting), 2)
    assert await d.drain(2)
    assert seen == [0, 1, 2, 3, 4, 5], "a later submitter overtook an earlier one"


async def test_a_cancelled_waiting_submitter_does_not_leak_its_slot() -> None:
    ledger = Ledger()
    gate = asyncio.Event()

    async def handler(event: Event) -> None:
        await gate.wait()

    d = ledger.dispatcher(handler, max_in_flight=1)
    await d.submit(ledger.message())
    doomed = asyncio.create_task(d.submit(ledger.message()))
    await asyncio.sleep(0.01)
    doomed.cancel()
    gate.set()
    await asyncio.sleep(0)  # the slot frees; the cancelled waiter must not keep it
    await asyncio.wait_for(d.submit(ledger.message()), 1)
    assert await d.drain(2)
    assert len(ledger.acked) == 2 and d.in_flight == 0 and d.stats.received == 2


async def test_a_handler_raising_a_stray_cancellation_does_not_stall_its_key() -> None:
    ledger = Ledger()
    seen: list[str] = []

    async def handler(event: Event) -> None:
        if event.data["tag"] == "bad":
            raise asyncio.CancelledError  # not a close: e.g. an awaited inner task was cancelled
        seen.append(event.data["tag"])

    d = ledger.dispatcher(handler, max_in_flight=4)
    bad = ledger.message(key="k", tag="bad")
    await d.submit(bad)
    await d.submit(ledger.message(key="k", tag="next"))
    await d.submit(ledger.message(key="j", tag="other"))
    assert await d.drain(2), "the key stayed blocked behind the dead worker"
    assert sorted(seen) == ["next", "other"]
    assert bad.event is not None
    assert bad.event.id not in ledger.acked and not ledger.nacked, "it must stay unsettled"
    # The pool still works afterwards.
    await d.submit(ledger.message(key="k", tag="after"))
    assert await d.drain(2) and "after" in seen


async def test_the_nats_rule_in_flight_still_counts_a_message_while_it_is_acked() -> None:
    seen_in_ack: list[int] = []
    d: Dispatcher | None = None
    event = Event(type="d.x")

    async def ack() -> None:
        assert d is not None
        seen_in_ack.append(d.in_flight)

    async def nack() -> None:
        pass

    async def store(dm: DeadMessage) -> None:
        pass

    d = Dispatcher("sub-3", lambda e: None, SubscribeOptions(), store)
    await d.submit(Inbound(raw=encode(event), event=event, ack=ack, nack=nack))
    assert await d.drain(2)
    assert seen_in_ack == [1]


async def test_close_ends_every_worker_task() -> None:
    ledger = Ledger()

    async def handler(event: Event) -> None:
        await asyncio.sleep(0.001)

    d = ledger.dispatcher(handler, max_in_flight=8)
    for n in range(50):
        await d.submit(ledger.message(key=f"k{n % 10}"))
    assert await d.close(timeout=2) == 0
    left = [t for t in asyncio.all_tasks() if t.get_name().startswith("tidings-dispatch")]
    assert not left, f"{len(left)} worker task(s) outlived close()"
    assert len(ledger.acked) == 50


# ---- the memory transport's copies (it feeds the dispatcher without a codec on the hot path) --
# Every delivery must equal decode(encode(event)) and be private to its handler.


class Priced(Event, type="dispatch-test.priced"):
    sku: str
    amount: float
    qty: int | None = None
    extra: dict[str, Any] | None = None


async def _two_subscribers(
    events: list[Event], mutate: bool
) -> tuple[list[Event], list[Event], MemoryTransport]:
    t = MemoryTransport(f"memory://dt-{uuid.uuid4().hex[:10]}")
    await t.start()
    first: list[Event] = []
    second: list[Event] = []

    def meddle(event: Event) -> None:
        first.append(event)
        if mutate:
            event.subject = "changed"
            if isinstance(event.data, dict):
                event.data["n"] = -1
                event.data.setdefault("nested", {})["x"] = "changed"
            if isinstance(event, Priced) and event.extra is not None:
                event.extra["tags"].append("changed")

    await t.subscribe("**", meddle)
    await t.subscribe("**", second.append)
    for event in events:
        await t.publish(event)
    for _ in range(200):
        if len(first) == len(second) == len(events):
            break
        await asyncio.sleep(0.005)
    return first, second, t


@pytest.mark.parametrize(
    "event",
    [
        Event(type="plain.x", aggregate_id="a", data={"n": 1, "nested": {"x": "y"}, "l": [1]}),
        Event(type="plain.scalar", data="text", metadata={"m": [1, 2.5, None, True]}),
        Priced(sku="s", amount=1.5, qty=2, extra={"tags": ["a"]}),
        Priced(sku="s", amount=2.0),
        # Not plain JSON: a tuple becomes a list, an int in a float field a float, a naive
        # offset a UTC time. These go through the codec, as on any broker.
        Event(type="plain.tuple", data={"t": (1, 2)}),
        Priced(sku="s", amount=3),  # type: ignore[arg-type]
        Event(type="plain.tz", time=datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
async def test_memory_deliveries_equal_the_json_round_trip_and_are_private(event: Event) -> None:
    expected = decode(encode(event))
    first, second, t = await _two_subscribers([event], mutate=True)
    try:
        assert len(first) == len(second) == 1
        got = second[0]
        assert type(got) is type(expected) and got == expected
        assert got is not event and got is not first[0]
        assert encode(got) == encode(expected)
    finally:
        await t.close()


async def test_memory_publisher_changes_after_publish_are_not_seen() -> None:
    t = MemoryTransport(f"memory://dt-{uuid.uuid4().hex[:10]}")
    await t.start()
    gate = asyncio.Event()
    got: list[Event] = []

    async def slow(event: Event) -> None:
        await gate.wait()
        got.append(event)

    try:
        await t.subscribe("p.x", slow, SubscribeOptions(max_in_flight=1))
        event = Event(type="p.x", data={"n": 1})
        body = encode(event)
        await t.publish(event)
        event.data["n"] = 2
        event.subject = "later"
        gate.set()
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.005)
        assert got and encode(got[0]) == body
    finally:
        await t.close()


async def test_memory_dead_letters_keep_the_body_as_published() -> None:
    t = MemoryTransport(f"memory://dt-{uuid.uuid4().hex[:10]}")
    await t.start()

    def spoil_then_fail(event: Event) -> None:
        event.data["n"] = "spoiled"
        event.subject = "spoiled"
        raise ValueError("no")

    try:
        sub = await t.subscribe("d.x", spoil_then_fail, SubscribeOptions(retry=RetryPolicy.none()))
        event = Event(type="d.x", aggregate_id="k", data={"n": 1})
        body = encode(event)
        await t.publish(event)
        for _ in range(100):
            if await t.dead_letters(sub.name):
                break
            await asyncio.sleep(0.005)
        dead = await t.dead_letters(sub.name)
        assert len(dead) == 1 and dead[0].raw == body and dead[0].event_id == event.id
    finally:
        await t.close()


async def test_memory_publish_still_rejects_an_event_that_cannot_be_encoded() -> None:
    t = MemoryTransport(f"memory://dt-{uuid.uuid4().hex[:10]}")
    await t.start()
    try:
        with pytest.raises(EventError):
            await t.publish(Priced(sku="s", amount=1.0, data={"not": "allowed"}))
        with pytest.raises(EventError):
            await t.publish(Event(type="bad.x", data={"x": object()}))
    finally:
        await t.close()


async def test_a_handler_changing_its_events_key_does_not_lose_the_lane() -> None:
    ledger = Ledger()
    seen: list[int] = []

    def rekey(event: Event) -> None:
        seen.append(event.data["n"])
        event.aggregate_id = f"moved-{event.data['n']}"

    d = ledger.dispatcher(rekey, max_in_flight=4)
    for n in range(6):
        await d.submit(ledger.message(key="k", n=n))
    assert await d.drain(2), "the key's lane was lost when the handler changed the key"
    assert seen == list(range(6)) and len(ledger.acked) == 6
    await d.submit(ledger.message(key="k", n=6))
    assert await d.drain(2) and seen[-1] == 6


async def test_a_dying_worker_is_replaced_even_at_max_in_flight_one() -> None:
    ledger = Ledger()
    seen: list[str] = []

    async def handler(event: Event) -> None:
        if event.data["tag"] == "bad":
            raise asyncio.CancelledError
        seen.append(event.data["tag"])

    d = ledger.dispatcher(handler, max_in_flight=1)
    await d.submit(ledger.message(key="k", tag="bad"))
    await asyncio.wait_for(d.submit(ledger.message(key="k", tag="next")), 1)
    assert await d.drain(2) and seen == ["next"]
