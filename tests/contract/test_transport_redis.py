"""Redis transport: the shared contract (Streams and pub/sub modes) plus Redis-specific checks.

The contract runs against the shared Redis on 127.0.0.1:6379 with a fresh key prefix per test;
the restart test kills (SIGKILL) and restarts a PRIVATE redis-server started here on a free port
with an fsync-always append-only file, so the restart keeps what was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.conftest import require_service
from tests.contract.transport_contract import Collector, TransportContract, make_event
from tidings.event import Event
from tidings.retry import RetryPolicy
from tidings.topics import PatternError
from tidings.transport import SubscribeOptions, TransportError, TransportState
from tidings.transports import open_transport
from tidings.transports.redis import RedisTransport

HOST, PORT = "127.0.0.1", 6379
SHARED = f"redis://{HOST}:{PORT}/0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


async def _drop_prefix(prefix: str) -> None:
    client = Redis.from_url(SHARED)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def fresh_prefix() -> AsyncIterator[str]:
    require_service("Redis", HOST, PORT)
    prefix = f"tc-{uuid.uuid4().hex[:12]}"
    yield prefix
    await _drop_prefix(prefix)


class PrivateRedis:
    """A redis-server of our own, so a test may SIGKILL it; AOF fsync=always keeps its data."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="tidings-redis-")
        self.url = f"redis://{HOST}:{self.port}/0?prefix=restart"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                self.dir,
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def _ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                client = Redis(host=HOST, port=self.port)
                try:
                    if await client.ping():
                        return
                finally:
                    await client.aclose()
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def start(self) -> None:
        self._spawn()
        await self._ready()

    async def restart(self) -> None:
        self.kill()
        self._spawn()
        await self._ready()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("SKIPPED LOUDLY: redis-server is not on PATH; the restart test needs it")
    server = PrivateRedis()
    await server.start()
    try:
        yield server
    finally:
        server.stop()


class TestRedisStreamsContract(TransportContract):
    @pytest.fixture
    def transport_url(self, fresh_prefix: str) -> str:
        return f"{SHARED}?prefix={fresh_prefix}"

    @pytest.fixture
    def publish_raw(self, fresh_prefix: str) -> Callable[[bytes, str], Awaitable[None]]:
        async def put(body: bytes, type_hint: str) -> None:
            client = Redis.from_url(SHARED)
            try:
                await client.xadd(f"{fresh_prefix}:events", {type_hint: body})
            finally:
                await client.aclose()

        return put

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"redis://:hunter2@{HOST}:{_free_port()}/0"

    @pytest.fixture
    def restart_server(self, private_redis: PrivateRedis) -> PrivateRedis:
        return private_redis


class TestRedisPubSubContract(TransportContract):
    """Fire-and-forget mode: the contract skips what it does not claim (groups, persistence)."""

    @pytest.fixture
    def transport_url(self, fresh_prefix: str) -> str:
        return f"{SHARED}?prefix={fresh_prefix}&mode=pubsub"

    @pytest.fixture
    def publish_raw(self, fresh_prefix: str) -> Callable[[bytes, str], Awaitable[None]]:
        async def put(body: bytes, type_hint: str) -> None:
            client = Redis.from_url(SHARED)
            try:
                await client.publish(f"{fresh_prefix}:ev:{type_hint}", body)
            finally:
                await client.aclose()

        return put

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"redis://{HOST}:{_free_port()}/0?mode=pubsub"


# ---- Redis-specific behaviour --------------------------------------------------------------


@contextlib.contextmanager
def _no_password_in(text_source: Callable[[], str], secret: str) -> Iterator[None]:
    yield
    assert secret not in text_source()


async def test_url_options_and_redaction() -> None:
    t = RedisTransport("redis://:s3cret@example.invalid:6390/2?prefix=app&maxlen=1000")
    assert t.prefix == "app" and t.maxlen == 1000 and t.mode == "streams"
    assert t.stream == "app:events"
    assert "s3cret" not in t.url and t.server == "example.invalid:6390"
    assert t.capabilities.persistent and t.capabilities.redelivery
    p = RedisTransport("rediss://localhost/0?mode=pubsub")
    assert not p.capabilities.persistent and not p.capabilities.consumer_groups
    assert RedisTransport("redis://h/0", prefix="x").prefix == "x"  # kwargs win over the URL
    for bad in ("redis://h/0?mode=kafka", "redis://h/0?maxlen=0", "redis://h/0?maxlen=many"):
        with pytest.raises(TransportError):
            RedisTransport(bad)
    assert isinstance(open_transport("rediss://h:1/0"), RedisTransport)


async def test_unreachable_names_server_without_password() -> None:
    port = _free_port()
    t = RedisTransport(f"redis://user:topsecret@{HOST}:{port}/0")
    began = time.monotonic()
    with pytest.raises(TransportError) as info:
        await t.start()
    assert time.monotonic() - began < 3
    assert f"{HOST}:{port}" in str(info.value)
    assert "topsecret" not in str(info.value)
    with pytest.raises(TransportError, match="start"):
        await t.publish(make_event("x.y"))
    await t.close()


async def test_round_trip_filters_in_the_stream_and_acks_everything(fresh_prefix: str) -> None:
    t = RedisTransport(f"{SHARED}?prefix={fresh_prefix}")
    await t.start()
    try:
        got = Collector()
        sub = await t.subscribe("orders.*", got, SubscribeOptions(group="billing"))
        events = [
            make_event("orders.placed" if i % 2 else "users.created", n=i) for i in range(200)
        ]
        await t.publish_many(events)
        want = [e.id for e in events if e.type == "orders.placed"]
        await TransportContract.wait_for(lambda: got.count() >= 100, 10, "100 orders")
        assert got.ids == want  # one stream: publish order kept even without a key
        client = Redis.from_url(SHARED)
        try:

            async def nothing_pending() -> bool:
                info = await client.xpending(t.stream, sub.name)
                return int(info["pending"]) == 0

            # Matching events acked after their handler, the others acked unread.
            await TransportContract.wait_for(nothing_pending, 5, "every entry acked")
            assert await client.xlen(t.stream) == 200
            (_id, fields), *_ = await client.xrange(t.stream, count=1)
            assert list(fields) == [b"users.created"], "one field per entry: {type: body}"
        finally:
            await client.aclose()
        await TransportContract.wait_for(lambda: t.health().lag == 0, 5, "lag 0 in health()")
    finally:
        await t.close()


async def test_publishes_past_the_pool_size_wait_instead_of_failing(fresh_prefix: str) -> None:
    """``max_connections`` caps the pool: a burst beyond it queues for a connection, and
    nothing is reported as a lost server."""
    errors: list[BaseException] = []
    t = RedisTransport(f"{SHARED}?prefix={fresh_prefix}", max_connections=3, on_error=errors.append)
    await t.start()
    try:
        got = Collector()
        await t.subscribe("burst.*", got, SubscribeOptions(group="g"))
        events = [make_event("burst.one", n=i) for i in range(100)]
        await asyncio.gather(*(t.publish(e) for e in events))
        await TransportContract.wait_for(lambda: got.count() >= 100, 10, "100 burst events")
        assert sorted(got.ids) == sorted(e.id for e in events)
        assert errors == []
        assert t.health().state is TransportState.CONNECTED
    finally:
        await t.close()


async def test_maxlen_trims_the_stream(fresh_prefix: str) -> None:
    t = RedisTransport(f"{SHARED}?prefix={fresh_prefix}&maxlen=100")
    await t.start()
    try:
        await t.publish_many([make_event("trim.me", n=i) for i in range(2000)])
        client = Redis.from_url(SHARED)
        try:
            length = await client.xlen(t.stream)
        finally:
            await client.aclose()
        assert 100 <= length < 2000  # approximate trimming (MAXLEN ~)
    finally:
        await t.close()


async def test_start_earliest_and_new(fresh_prefix: str) -> None:
    t = RedisTransport(f"{SHARED}?prefix={fresh_prefix}")
    await t.start()
    try:
        old = [make_event("hist.x", n=i) for i in range(3)]
        await t.publish_many(old)
        early, late = Collector(), Collector()
        await t.subscribe("hist.x", early, SubscribeOptions(start="earliest"))
        await t.subscribe("hist.x", late)
        new = make_event("hist.x", n=3)
        await t.publish(new)
        await TransportContract.wait_for(lambda: early.count() >= 4 and late.count() >= 1, 10)
        await asyncio.sleep(0.1)
        assert early.ids == [e.id for e in [*old, new]]
        assert late.ids == [new.id]
    finally:
        await t.close()


async def test_group_cursor_survives_members_and_lost_group_is_recreated(
    fresh_prefix: str,
) -> None:
    url = f"{SHARED}?prefix={fresh_prefix}"
    t = RedisTransport(url)
    await t.start()
    client = Redis.from_url(SHARED)
    try:
        got = Collector()
        opts = SubscribeOptions(group="durable")
        sub = await t.subscribe("dur.*", got, opts)
        first = [make_event("dur.a", n=i) for i in range(10)]
        await t.publish_many(first)
        await TransportContract.wait_for(lambda: got.count() >= 10, 10)
        await sub.close()
        # Published while nobody of the group listens: the group cursor keeps them.
        missed = [make_event("dur.a", n=i) for i in range(10, 15)]
        await t.publish_many(missed)
        got2 = Collector()
        sub2 = await t.subscribe("dur.*", got2, opts)
        await TransportContract.wait_for(lambda: got2.count() >= 5, 10, "events of the gap")
        assert got2.ids == [e.id for e in missed]
        # The server loses the group (e.g. restarted without persistence): recreated, and
        # what is published afterwards still arrives.
        await client.xgroup_destroy(t.stream, sub2.name)
        later = make_event("dur.a", n=99)
        await asyncio.sleep(0.1)
        await t.publish(later)
        await TransportContract.wait_for(lambda: later.id in got2.ids, 10, "after recreate")
    finally:
        await client.aclose()
        await t.close()


async def test_claimed_message_carries_delivery_count(fresh_prefix: str) -> None:
    url = f"{SHARED}?prefix={fresh_prefix}"
    t1, t2 = RedisTransport(url), RedisTransport(url)
    await t1.start()
    await t2.start()
    try:
        counts: list[int] = []
        taken = asyncio.Event()

        async def hang(event: Event) -> None:
            taken.set()
            await asyncio.Event().wait()

        opts = SubscribeOptions(group="dc", ack_wait=0.3)
        sub = await t1.subscribe("dc.x", hang, opts)
        await t1.publish(make_event("dc.x"))
        await asyncio.wait_for(taken.wait(), 5)
        await sub.close(timeout=0.05)
        sub2 = await t2.subscribe("dc.x", lambda e: None, opts)
        original = sub2._dispatcher.submit  # type: ignore[union-attr]

        async def spy(msg: Any) -> None:
            counts.append(msg.delivery_count)
            await original(msg)

        sub2._dispatcher.submit = spy  # type: ignore[union-attr,method-assign]
        await TransportContract.wait_for(lambda: counts == [2], 5, "a redelivery counted twice")
    finally:
        await t1.close(timeout=0.1)
        await t2.close()


async def test_slow_handler_is_not_stolen_by_a_peer(fresh_prefix: str) -> None:
    """A handler slower than ack_wait keeps its message: the heartbeat refreshes it."""
    url = f"{SHARED}?prefix={fresh_prefix}"
    t1, t2 = RedisTransport(url), RedisTransport(url)
    await t1.start()
    await t2.start()
    try:
        seen: list[str] = []

        async def slow(event: Event) -> None:
            seen.append(event.id)
            await asyncio.sleep(2.0)

        opts = SubscribeOptions(group="slow", ack_wait=0.6)
        await t1.subscribe("slow.x", slow, opts)
        await t2.subscribe("slow.x", slow, opts)
        sent = make_event("slow.x")
        await t1.publish(sent)
        await asyncio.sleep(2.6)  # > 4 x ack_wait: a peer would have claimed it by now
        assert seen == [sent.id], f"delivered {len(seen)} times"
    finally:
        await t1.close()
        await t2.close()


@pytest.mark.timeout(60)
async def test_health_goes_disconnected_and_back(private_redis: PrivateRedis) -> None:
    errors: list[BaseException] = []
    t = RedisTransport(private_redis.url, on_error=errors.append)
    await t.start()
    try:
        got = Collector()
        await t.subscribe("hb.x", got, SubscribeOptions(group="g"))
        await t.publish(make_event("hb.x"))
        await TransportContract.wait_for(lambda: got.count() == 1, 5)
        private_redis.kill()
        await TransportContract.wait_for(
            lambda: t.health().state is TransportState.DISCONNECTED, 10, "DISCONNECTED"
        )
        assert errors, "the on_error callback heard nothing"
        assert t.health().last_error
        with pytest.raises(TransportError, match=f"{HOST}:{private_redis.port}"):
            await t.ping()
        private_redis._spawn()
        await private_redis._ready()
        await TransportContract.wait_for(
            lambda: t.health().state is TransportState.CONNECTED, 10, "CONNECTED again"
        )
        await t.publish(make_event("hb.x"))
        await TransportContract.wait_for(lambda: got.count() == 2, 10, "events after restart")
    finally:
        await t.close()


async def test_publish_fails_clearly_when_server_stays_away(private_redis: PrivateRedis) -> None:
    t = RedisTransport(private_redis.url, publish_timeout=0.5)
    await t.start()
    try:
        private_redis.kill()
        began = time.monotonic()
        with pytest.raises(TransportError, match="unreachable"):
            await t.publish(make_event("gone.x"))
        assert time.monotonic() - began < 3
    finally:
        await t.close(timeout=0.5)


async def test_dead_letters_and_replay_in_order(fresh_prefix: str) -> None:
    t = RedisTransport(f"{SHARED}?prefix={fresh_prefix}")
    await t.start()
    try:
        healed = False
        ok: list[int] = []

        def handler(event: Event) -> None:
            if not healed:
                raise ValueError("nope")
            ok.append(event.data["n"])

        opts = SubscribeOptions(group="dlq", retry=RetryPolicy(max_retries=0))
        sub = await t.subscribe("dl.*", handler, opts)
        await t.publish_many([make_event("dl.x", key="k", n=i) for i in range(5)])
        await TransportContract.wait_for(
            lambda: _count(t.dead_letters(sub.name), 5), 10, "5 dead letters"
        )
        dead = await t.dead_letters(sub.name, limit=3)
        assert [d.event().data["n"] for d in dead] == [0, 1, 2]  # type: ignore[union-attr]
        assert all(d.attempts == 1 and "ValueError: nope" in d.error for d in dead)
        healed = True
        assert await t.replay_dead_letters(sub.name) == 5
        await TransportContract.wait_for(lambda: len(ok) == 5, 10, "5 replayed")
        assert ok == [0, 1, 2, 3, 4]
    finally:
        await t.close()


async def _count(value: Awaitable[list[Any]], n: int) -> bool:
    return len(await value) >= n


# ---- pub/sub mode --------------------------------------------------------------------------


async def test_pubsub_patterns_and_fire_and_forget(fresh_prefix: str) -> None:
    t = RedisTransport(f"{SHARED}?prefix={fresh_prefix}&mode=pubsub")
    await t.start()
    try:
        with pytest.raises(TransportError, match="no consumer groups"):
            await t.subscribe("ps.*", Collector(), SubscribeOptions(group="g"))
        with pytest.raises(PatternError):
            await t.subscribe("ps..x", Collector())
        before = make_event("ps.a.z")
        await t.publish(before)  # nobody listens yet: gone, as pub/sub promises
        one, deep, exact = Collector(), Collector(), Collector()
        await t.subscribe("ps.*", one)
        await t.subscribe("ps.**.z", deep)
        await t.subscribe("ps.a.z", exact)
        types = ["ps.a", "ps.z", "ps.a.z", "ps.a.b.z", "psx.z", "other"]
        await t.publish_many([make_event(ty) for ty in types])
        await TransportContract.wait_for(
            lambda: one.count() >= 2 and deep.count() >= 3 and exact.count() >= 1, 5
        )
        await asyncio.sleep(0.2)
        assert sorted(e.type for e in one.events) == ["ps.a", "ps.z"]
        assert sorted(e.type for e in deep.events) == ["ps.a.b.z", "ps.a.z", "ps.z"]
        assert [e.type for e in exact.events] == ["ps.a.z"]
        assert before.id not in {e.id for e in deep.events}
        counts = Counter(e.id for e in deep.events)
        assert max(counts.values()) == 1
    finally:
        await t.close()


async def test_max_deliveries_dead_letters_a_message_that_kills_its_consumers(
    fresh_prefix: str,
) -> None:
    url = f"{SHARED}?prefix={fresh_prefix}"
    t1, t2 = RedisTransport(url), RedisTransport(url, max_deliveries=1)
    await t1.start()
    await t2.start()
    try:
        taken = asyncio.Event()

        async def hang(event: Event) -> None:
            taken.set()
            await asyncio.Event().wait()

        opts = SubscribeOptions(group="poison", ack_wait=0.2)
        sub = await t1.subscribe("poison.x", hang, opts)
        sent = make_event("poison.x")
        await t1.publish(sent)
        await asyncio.wait_for(taken.wait(), 5)
        await sub.close(timeout=0.05)  # "dies" holding it
        ran: list[str] = []
        sub2 = await t2.subscribe("poison.x", lambda e: ran.append(e.id), opts)
        await TransportContract.wait_for(
            lambda: _count(t2.dead_letters(sub2.name), 1), 5, "the poison message in the DLQ"
        )
        dead = (await t2.dead_letters(sub2.name))[0]
        assert dead.event_id == sent.id and dead.attempts == 2
        assert "max_deliveries=1" in dead.error
        assert ran == []
    finally:
        await t1.close(timeout=0.1)
        await t2.close()


@pytest.mark.timeout(60)
async def test_pubsub_resubscribes_after_server_restart(private_redis: PrivateRedis) -> None:
    t = RedisTransport(private_redis.url, mode="pubsub")
    await t.start()
    try:
        got = Collector()
        await t.subscribe("live.*", got)
        await t.publish(make_event("live.a"))
        await TransportContract.wait_for(lambda: got.count() == 1, 5)
        await private_redis.restart()

        async def arrives() -> bool:  # fire-and-forget: publish until the listener is back
            await t.publish(make_event("live.b"))
            await asyncio.sleep(0.1)
            return any(e.type == "live.b" for e in got.events)

        await TransportContract.wait_for(arrives, 15, "an event after the restart")
        assert t.health().state is TransportState.CONNECTED
    finally:
        await t.close()
