"""The transport contract on the in-process memory transport, plus what only it promises."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.contract.transport_contract import Collector, TransportContract, make_event
from tidings.event import Event
from tidings.retry import RetryPolicy
from tidings.transport import DeadMessage, SubscribeOptions, TransportError
from tidings.transports import SCHEMES, open_transport, redact_url
from tidings.transports.memory import MemoryTransport


class TestMemoryTransport(TransportContract):
    @pytest.fixture
    def transport_url(self) -> str:
        return f"memory://tc-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    async def publish_raw(
        self, transport_url: str
    ) -> AsyncIterator[Callable[[bytes, str], Awaitable[None]]]:
        sender = MemoryTransport(transport_url)
        await sender.start()
        yield sender.publish_raw
        await sender.close()

    @pytest.fixture
    def unreachable_url(self) -> str:
        return "memory://"

    async def test_unreachable_server_is_a_clear_error(self, unreachable_url: str) -> None:
        pytest.skip("the memory transport has no server to be unreachable")


# ---- memory-only behaviour ------------------------------------------------------------------


def _url() -> str:
    return f"memory://m-{uuid.uuid4().hex[:12]}"


async def test_same_url_shares_a_broker_and_bare_url_is_private() -> None:
    url = _url()
    a, b = MemoryTransport(url), MemoryTransport(url)
    private = MemoryTransport("memory://")
    for t in (a, b, private):
        await t.start()
    try:
        got, alone = Collector(), Collector()
        await b.subscribe("x.*", got)
        await private.subscribe("x.*", alone)
        await a.publish(make_event("x.y"))
        await asyncio.sleep(0.05)
        assert got.count() == 1
        assert alone.count() == 0
    finally:
        for t in (a, b, private):
            await t.close()


async def test_full_inbox_makes_the_publisher_wait() -> None:
    t = MemoryTransport(_url(), buffer_size=4)
    await t.start()
    release = asyncio.Event()
    handled = 0

    async def stuck(event: object) -> None:
        nonlocal handled
        await release.wait()
        handled += 1

    try:
        await t.subscribe("bp", stuck, SubscribeOptions(max_in_flight=1))
        published = 0

        async def producer() -> None:
            nonlocal published
            for _ in range(50):
                await t.publish(make_event("bp"))
                published += 1

        task = asyncio.create_task(producer())
        await asyncio.sleep(0.1)
        # 1 in the handler + 1 held by the pump + 4 in the inbox, then the publisher waits.
        assert published <= 6, f"publisher ran ahead of a full inbox: {published}"
        assert not task.done()
        release.set()
        await asyncio.wait_for(task, 5)
        for _ in range(100):
            if handled == 50:
                break
            await asyncio.sleep(0.01)
        assert handled == 50
    finally:
        release.set()
        await t.close()


async def test_publish_from_another_event_loop_thread() -> None:
    url = _url()
    consumer = MemoryTransport(url)
    await consumer.start()
    got = Collector()
    await consumer.subscribe("cross.*", got)

    def other_thread() -> None:
        async def run() -> None:
            producer = MemoryTransport(url)
            await producer.start()
            await producer.publish_many([make_event("cross.x", n=i) for i in range(100)])
            await producer.close()

        asyncio.run(run())

    thread = threading.Thread(target=other_thread)
    thread.start()
    await asyncio.to_thread(thread.join, 10)
    for _ in range(200):
        if got.count() == 100:
            break
        await asyncio.sleep(0.01)
    assert [e.data["n"] for e in got.events] == list(range(100))
    await consumer.close()


async def test_a_dead_letter_that_cannot_be_stored_is_nacked_and_delivered_again() -> None:
    t = MemoryTransport(_url())
    await t.start()
    calls = 0

    async def failing(event: Event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("handler down")

    try:
        sub = await t.subscribe("n", failing, SubscribeOptions(retry=RetryPolicy.none()))
        store = sub._dispatcher._dead_letter
        outages = [OSError("dead-letter store full")]

        async def flaky(dead: DeadMessage) -> None:
            if outages:
                raise outages.pop()
            await store(dead)

        sub._dispatcher._dead_letter = flaky
        await t.publish(make_event("n"))
        for _ in range(200):
            if len(await t.dead_letters(sub.name)) == 1:
                break
            await asyncio.sleep(0.01)
        assert calls == 2, "the nacked message was not delivered again"
        assert len(await t.dead_letters(sub.name)) == 1
        assert sub.stats.dead == 1
    finally:
        await t.close()


async def test_group_survivor_gets_untaken_messages_at_once() -> None:
    url = _url()
    a, b = MemoryTransport(url, buffer_size=100), MemoryTransport(url, buffer_size=100)
    await a.start()
    await b.start()
    gate = asyncio.Event()
    got_b = Collector()

    async def slow(event: object) -> None:
        await gate.wait()

    try:
        opts = SubscribeOptions(group="g", max_in_flight=1, ack_wait=30.0)
        sub_a = await a.subscribe("g.*", slow, opts)
        await b.subscribe("g.*", got_b, opts)
        events = [make_event("g.x", key=f"k{i}") for i in range(40)]
        await a.publish_many(events)
        await asyncio.sleep(0.05)
        before = got_b.count()
        await sub_a.close(timeout=0.05)
        await asyncio.sleep(0.1)
        # Everything a had queued but not started went to b at once; only its one in-flight
        # message waits for ack_wait (30 s here).
        assert got_b.count() == 39, (before, got_b.count())
    finally:
        gate.set()
        await a.close()
        await b.close()


def test_open_transport_picks_memory_and_rejects_bad_urls() -> None:
    assert "memory" in SCHEMES
    t = open_transport("memory://x?buffer_size=8")
    assert isinstance(t, MemoryTransport)
    assert t.buffer_size == 8
    with pytest.raises(TransportError, match="unknown scheme 'nope'"):
        open_transport("nope://x")
    with pytest.raises(TransportError, match="expected scheme://"):
        open_transport("memory")
    with pytest.raises(TransportError, match="buffer_size"):
        open_transport("memory://x?buffer_size=lots")
    with pytest.raises(TransportError, match="buffer_size"):
        MemoryTransport("memory://x", buffer_size=0)


async def test_not_started_is_a_clear_error() -> None:
    t = MemoryTransport("memory://")
    with pytest.raises(TransportError, match="not started"):
        await t.publish(make_event("x"))
    await t.close()
    with pytest.raises(TransportError, match="closed"):
        await t.start()


async def test_start_earliest_is_refused_clearly() -> None:
    t = MemoryTransport("memory://")
    await t.start()
    try:
        with pytest.raises(TransportError, match="keeps no history"):
            await t.subscribe("x", Collector(), SubscribeOptions(start="earliest"))
    finally:
        await t.close()


def test_urls_in_errors_hide_passwords() -> None:
    with pytest.raises(TransportError) as info:
        open_transport("nope://user:s3cret@host:1/x")
    assert "s3cret" not in str(info.value) and "user:***@host:1" in str(info.value)
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("memory://x") == "memory://x"


async def test_a_publisher_waiting_on_a_full_inbox_is_released_when_it_closes() -> None:
    t = MemoryTransport(_url(), buffer_size=1)
    await t.start()
    gate = asyncio.Event()

    async def stuck(event: Event) -> None:
        await gate.wait()

    try:
        sub = await t.subscribe("full", stuck, SubscribeOptions(max_in_flight=1))
        batch = [make_event("full") for _ in range(10)]
        producer: asyncio.Task[None] = asyncio.create_task(t.publish_many(batch))
        await asyncio.sleep(0.05)
        assert not producer.done()
        await sub.close(timeout=0.05)
        await asyncio.wait_for(producer, 2)  # would hang forever without the release
    finally:
        gate.set()
        await t.close()
