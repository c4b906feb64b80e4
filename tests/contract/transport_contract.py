"""The transport contract: one suite every broker backend must pass against its real server.

Subclass ``TransportContract`` in ``tests/contract/test_transport_<backend>.py`` (the class name
must start with ``Test``) and provide these fixtures; the tests use only them and the Transport
protocol, so the same assertions hold for every backend:

- ``transport_url`` (str): a URL naming a FRESH isolated namespace on the real server (unique
  stream / prefix / exchange / vhost / table per test), cleaned up by the subclass at teardown.
- ``transport_options`` (dict, default ``{}``): extra keyword arguments for ``open_transport``.
- ``publish_raw`` (async ``(body: bytes, type_hint: str) -> None``): puts a raw body where an
  event of type ``type_hint`` would travel, bypassing encoding (the undecodable-message test).
- ``unreachable_url`` (str): a URL of this scheme on a closed port (the clear-error test).
- ``restart_server`` (optional, default None): an object with ``url`` (a URL on a PRIVATE server
  started by the fixture on a free port) and ``async restart()`` that kills the process (SIGKILL)
  and starts it again on the same port and data dir. The restart test skips when it is None.

What the contract assumes of every backend beyond the protocol docstrings:

- ``subscribe`` returns only once the subscription will receive every matching event published
  after it returns (Kafka: partitions assigned; NATS: consumer created; ...).
- ``close()`` of a subscription or transport never acks a message whose handler did not finish.
- Closing a transport whose ``start()`` failed (or never ran) is harmless.
- Optionally the subscription exposes ``stats`` (the Dispatcher's ``DispatchStats``); the suite
  checks its counters when present.

Helpers for subclasses and tests: ``make_transport(**opts)`` (a started transport, closed at
teardown; ``url=`` picks another URL) and ``wait_for(predicate, timeout)``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import pytest

from tidings.event import Event, decode
from tidings.retry import RetryPolicy
from tidings.topics import PatternError
from tidings.transport import (
    SubscribeOptions,
    Transport,
    TransportError,
    TransportState,
    TransportSubscription,
)
from tidings.transports import open_transport

__all__ = ["Collector", "RestartableServer", "TransportContract", "make_event"]

SOURCE = "tidings-contract"


class RestartableServer(Protocol):
    """What the optional ``restart_server`` fixture returns."""

    url: str

    async def restart(self) -> None: ...


def make_event(type_: str, key: str | None = None, **data: Any) -> Event:
    """A small event; ``key`` becomes the aggregate id (the ordering key)."""
    return Event(type=type_, source=SOURCE, aggregate_id=key, data=data or None)


class Collector:
    """An async handler that records what it got, optionally slowly (to overlap in time)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.events: list[Event] = []
        self.running = 0
        self.max_running = 0

    async def __call__(self, event: Event) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.events.append(event)
        finally:
            self.running -= 1

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]

    def count(self) -> int:
        return len(self.events)


async def _publish_in_chunks(transport: Transport, events: Sequence[Event], size: int) -> None:
    for start in range(0, len(events), size):
        await transport.publish_many(events[start : start + size])


@pytest.mark.timeout(60)
class TransportContract:
    """The suite. Subclasses override the fixtures below; tests gate on ``capabilities``."""

    # ---- fixtures a backend provides -------------------------------------------------------

    @pytest.fixture
    def transport_url(self) -> str:
        pytest.fail("the transport contract needs a `transport_url` fixture in the subclass")

    @pytest.fixture
    def transport_options(self) -> dict[str, Any]:
        return {}

    @pytest.fixture
    def publish_raw(self) -> Callable[[bytes, str], Awaitable[None]]:
        pytest.fail("the transport contract needs a `publish_raw` fixture in the subclass")

    @pytest.fixture
    def unreachable_url(self) -> str:
        pytest.fail("the transport contract needs an `unreachable_url` fixture in the subclass")

    @pytest.fixture
    def restart_server(self) -> RestartableServer | None:
        return None

    # ---- helpers ---------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    async def _contract_env(
        self, request: pytest.FixtureRequest, transport_url: str, transport_options: dict[str, Any]
    ) -> AsyncIterator[None]:
        # Stored on the test's own instance: pytest makes one per test.
        inst = request.instance if request.instance is not None else self
        inst._url = transport_url
        inst._options = dict(transport_options)
        inst._opened = []
        yield
        errors: list[str] = []
        for transport in reversed(inst._opened):
            try:
                await asyncio.wait_for(transport.close(timeout=2.0), 15)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        if errors:
            pytest.fail(f"closing transports at teardown raised: {errors}", pytrace=False)

    _url: str
    _options: dict[str, Any]
    _opened: list[Transport]

    async def make_transport(self, *, url: str | None = None, **opts: Any) -> Transport:
        """A started transport on this test's namespace (or ``url``), closed at teardown."""
        transport = open_transport(url or self._url, **{**self._options, **opts})
        self._opened.append(transport)
        await asyncio.wait_for(transport.start(), 30)
        return transport

    @staticmethod
    async def wait_for(
        predicate: Callable[[], bool | Awaitable[bool]],
        timeout: float = 10.0,
        what: str = "the condition",
    ) -> None:
        """Poll ``predicate`` (sync or async) until true; fail naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.02)

    async def _round_trip(self, prefix: str, n: int) -> None:
        """Publish ``n`` events under ``prefix`` (batched and single) and count them all back."""
        transport = await self.make_transport()
        got = Collector()
        await transport.subscribe(f"{prefix}.*", got)
        events = [
            make_event(f"{prefix}.{'created' if i % 2 else 'updated'}", n=i) for i in range(n)
        ]
        half = n // 2
        await _publish_in_chunks(transport, events[:half], 50)
        for event in events[half:]:
            await transport.publish(event)
        await self.wait_for(lambda: got.count() >= n, 20, f"{n} events under {prefix}")
        await asyncio.sleep(0.2)  # anything extra would show up now
        dupes = [i for i, c in Counter(got.ids).items() if c > 1]
        assert not dupes, f"{prefix}: {len(dupes)} events delivered twice without a failure"
        assert sorted(got.ids) == sorted(e.id for e in events), f"{prefix}: wrong events"

    # ---- publish / consume -----------------------------------------------------------------

    async def test_publish_and_consume_one(self) -> None:
        transport = await self.make_transport()
        got = Collector()
        sub = await transport.subscribe("ct.one", got)
        assert isinstance(sub, TransportSubscription)
        assert sub.pattern == "ct.one"
        assert sub.group is None
        sent = make_event("ct.one", key="k1", amount=10, tags=["a", "b"])
        await transport.publish(sent)
        await self.wait_for(lambda: got.count() == 1, 10, "one event")
        received = got.events[0]
        assert received.id == sent.id
        assert received.type == "ct.one"
        assert received.aggregate_id == "k1"
        assert received.data == {"amount": 10, "tags": ["a", "b"]}
        assert received.time == sent.time

    async def test_publish_and_consume_many(self) -> None:
        await self._round_trip("ct.many", 400)

    async def test_publish_many_empty_is_a_no_op(self) -> None:
        transport = await self.make_transport()
        await transport.publish_many([])

    async def test_stats_count_accepted_publishes_and_list_open_subscriptions(self) -> None:
        # What tidings.integrations.prometheus reads at scrape time.
        transport = await self.make_transport()
        got = Collector()
        sub = await transport.subscribe("ct.counted", got)
        assert transport.subscriptions() == [sub]
        await transport.publish_many([make_event("ct.counted", n=i) for i in range(3)])
        await transport.publish(make_event("ct.counted", n=3))
        await transport.publish_many([])
        assert transport.stats.published == 4
        await self.wait_for(lambda: got.count() == 4, 10, "4 events")
        stats = getattr(sub, "stats", None)
        if stats is not None:
            await self.wait_for(lambda: stats.handled == 4, 10, "4 handled in the stats")
            assert stats.received == 4
        await sub.close()
        assert transport.subscriptions() == []

    async def test_sync_handler(self) -> None:
        transport = await self.make_transport()
        got: list[str] = []
        await transport.subscribe("ct.sync", lambda e: got.append(e.id))
        sent = make_event("ct.sync")
        await transport.publish(sent)
        await self.wait_for(lambda: got == [sent.id], 10, "the sync handler to run")

    # ---- patterns --------------------------------------------------------------------------

    async def test_patterns_deliver_exactly_the_matching_types(self) -> None:
        transport = await self.make_transport()
        types = ["ct", "ct.b", "ct.c", "ct.b.c", "ct.z", "ct.b.z", "ct.b.c.z", "other.ct", "x.ct.z"]
        expected = {
            "ct.b": ["ct.b"],
            "ct.*": ["ct.b", "ct.c", "ct.z"],
            "ct.**": ["ct", "ct.b", "ct.c", "ct.b.c", "ct.z", "ct.b.z", "ct.b.c.z"],
            "ct.**.z": ["ct.z", "ct.b.z", "ct.b.c.z"],
            "*.ct": ["other.ct"],
            "**.z": ["ct.z", "ct.b.z", "ct.b.c.z", "x.ct.z"],
            "**": types,
        }
        collectors = {p: Collector() for p in expected}
        for pattern, collector in collectors.items():
            await transport.subscribe(pattern, collector)
        for type_ in types:
            await transport.publish(make_event(type_))
        for pattern, want in expected.items():
            c, n = collectors[pattern], len(want)
            await self.wait_for(lambda c=c, n=n: c.count() >= n, 10, f"{pattern!r}")
        await asyncio.sleep(0.3)
        for pattern, want in expected.items():
            got = sorted(e.type for e in collectors[pattern].events)
            assert got == sorted(want), f"pattern {pattern!r} got {got}, expected {sorted(want)}"

    async def test_invalid_pattern_raises_at_subscribe(self) -> None:
        transport = await self.make_transport()
        for bad in ["", "a..b", "a.b*", "a b", "."]:
            with pytest.raises(PatternError):
                await transport.subscribe(bad, Collector())

    # ---- fan-out and groups ----------------------------------------------------------------

    async def test_broadcast_every_subscription_gets_every_event(self) -> None:
        transport = await self.make_transport()
        first, second = Collector(), Collector()
        sub1 = await transport.subscribe("ct.bc.*", first)
        sub2 = await transport.subscribe("ct.bc.*", second)
        assert sub1.name != sub2.name, "broadcast subscriptions must not share a name (cursor)"
        events = [make_event("ct.bc.x", n=i) for i in range(50)]
        await _publish_in_chunks(transport, events, 25)
        want = sorted(e.id for e in events)
        await self.wait_for(lambda: first.count() >= 50 and second.count() >= 50, 10, "both")
        await asyncio.sleep(0.2)
        assert sorted(first.ids) == want
        assert sorted(second.ids) == want

    async def test_group_members_split_the_events(self) -> None:
        caps = (await self.make_transport()).capabilities
        if not caps.consumer_groups:
            pytest.skip("backend has no consumer groups")
        t1, t2 = await self.make_transport(), await self.make_transport()
        a, b = Collector(delay=0.002), Collector(delay=0.002)
        opts = SubscribeOptions(group="workers", max_in_flight=4)
        sub_a = await t1.subscribe("ct.grp.*", a, opts)
        sub_b = await t2.subscribe("ct.grp.*", b, opts)
        assert sub_a.name == sub_b.name, "members of one group share a name (cursor and DLQ)"
        assert sub_a.group == "workers"
        events = [make_event("ct.grp.job", key=f"k{i % 20}", n=i) for i in range(200)]
        await _publish_in_chunks(t1, events, 20)
        await self.wait_for(lambda: a.count() + b.count() >= 200, 20, "200 events in the group")
        await asyncio.sleep(0.3)
        both = a.ids + b.ids
        twice = [i for i, c in Counter(both).items() if c > 1]
        assert not twice, f"{len(twice)} events went to the group more than once"
        assert sorted(both) == sorted(e.id for e in events), "events lost in the group"
        assert a.count() > 0 and b.count() > 0, (
            f"one member got everything ({a.count()} vs {b.count()}): the group does not split"
        )

    # ---- order and concurrency -------------------------------------------------------------

    @pytest.mark.timeout(90)
    async def test_order_per_key_with_overlap_across_keys(self) -> None:
        transport = await self.make_transport()
        if not transport.capabilities.ordering:
            pytest.skip("backend does not keep order per key")
        seen: dict[str, list[int]] = defaultdict(list)
        running: set[str] = set()
        overlap = 0
        same_key_clash: list[str] = []

        async def handler(event: Event) -> None:
            nonlocal overlap
            key = event.aggregate_id
            assert key is not None
            if key in running:
                same_key_clash.append(key)
            running.add(key)
            overlap = max(overlap, len(running))
            try:
                await asyncio.sleep(0.001)
                seen[key].append(event.data["seq"])
            finally:
                running.discard(key)

        await transport.subscribe("ct.order", handler, SubscribeOptions(max_in_flight=16))
        events = [make_event("ct.order", key=f"k{i % 10}", seq=i // 10) for i in range(1000)]
        await _publish_in_chunks(transport, events, 100)
        total = lambda: sum(len(v) for v in seen.values())  # noqa: E731
        await self.wait_for(lambda: total() >= 1000, 60, "1,000 ordered events")
        assert not same_key_clash, f"two handlers of one key ran at once: {same_key_clash[:5]}"
        for key in (f"k{i}" for i in range(10)):
            assert seen[key] == list(range(100)), f"key {key} out of order: {seen[key][:20]}..."
        assert overlap > 1, "events of different keys never overlapped in time"

    async def test_in_flight_bound(self) -> None:
        transport = await self.make_transport()
        got = Collector(delay=0.02)
        await transport.subscribe("ct.bound", got, SubscribeOptions(max_in_flight=4))
        await _publish_in_chunks(
            transport, [make_event("ct.bound", key=f"k{i}") for i in range(40)], 40
        )
        await self.wait_for(lambda: got.count() >= 40, 20, "40 events")
        assert got.max_running <= 4, f"{got.max_running} handlers ran at once with max_in_flight=4"
        assert got.max_running >= 2, "distinct keys never ran concurrently"

    # ---- failures --------------------------------------------------------------------------

    async def test_failing_handler_is_retried_without_blocking_then_dead_lettered(self) -> None:
        transport = await self.make_transport()
        ordering = transport.capabilities.ordering
        attempts = 0
        healed = False
        good: list[str] = []
        bad_done_at: float | None = None
        follow_at: float | None = None
        good_done_at: float | None = None
        bad_attempts_when_good_done = -1

        async def handler(event: Event) -> None:
            nonlocal attempts, bad_done_at, follow_at, good_done_at, bad_attempts_when_good_done
            data = event.data or {}
            if data.get("fail"):
                if not healed:
                    attempts += 1
                    if attempts == 3:
                        bad_done_at = time.monotonic()
                    raise RuntimeError("contract: handler refuses")
                good.append(event.id)
                return
            if data.get("follow"):
                follow_at = time.monotonic()
                return
            good.append(event.id)
            if len(good) == 20:
                good_done_at = time.monotonic()
                bad_attempts_when_good_done = attempts

        retry = RetryPolicy(max_retries=2, initial_delay=0.4, max_delay=0.4)
        sub = await transport.subscribe("ct.fail.*", handler, SubscribeOptions(retry=retry))
        bad = make_event("ct.fail.x", key="bad", fail=True)
        follow = make_event("ct.fail.x", key="bad", follow=True)
        await transport.publish(bad)
        await transport.publish(follow)
        await transport.publish_many([make_event("ct.fail.x", key=f"g{i}") for i in range(20)])
        await self.wait_for(lambda: len(good) >= 20, 10, "20 healthy events")
        assert bad_attempts_when_good_done < 3, "a retrying key blocked the other keys"

        async def one_dead() -> bool:
            return len(await transport.dead_letters(sub.name)) >= 1

        await self.wait_for(one_dead, 10, "the failing event in the dead-letter list")
        await self.wait_for(lambda: follow_at is not None, 10, "the event after it, same key")
        assert attempts == 3, f"expected 1 attempt + 2 retries, got {attempts}"
        if ordering:
            assert bad_done_at is not None and follow_at is not None
            assert follow_at >= bad_done_at, "a later event of the key overtook a retrying one"
        dead = await transport.dead_letters(sub.name)
        assert len(dead) == 1, f"expected one dead message, got {len(dead)}"
        dm = dead[0]
        assert dm.subscription == sub.name
        assert dm.event_id == bad.id
        assert dm.event_type == "ct.fail.x"
        assert dm.attempts == 3
        assert "handler refuses" in dm.error
        assert decode(dm.raw).id == bad.id
        stats = getattr(sub, "stats", None)
        if stats is not None:
            assert stats.dead == 1 and stats.retried == 2

        healed = True
        assert await transport.replay_dead_letters(sub.name) == 1
        await self.wait_for(lambda: bad.id in good, 10, "the replayed dead message")
        assert await transport.dead_letters(sub.name) == []
        assert await transport.replay_dead_letters(sub.name) == 0

    async def test_undecodable_body_is_counted_and_dead_lettered(
        self, publish_raw: Callable[[bytes, str], Awaitable[None]]
    ) -> None:
        transport = await self.make_transport()
        got = Collector()
        sub = await transport.subscribe("ct.raw", got)
        body = b"{this is not an event"
        await publish_raw(body, "ct.raw")
        after = make_event("ct.raw")
        await transport.publish(after)
        await self.wait_for(lambda: got.ids == [after.id], 10, "the valid event after a bad body")

        async def dead_count() -> int:
            return len(await transport.dead_letters(sub.name))

        await self.wait_for(lambda: _ge(dead_count(), 1), 10, "the bad body in the DLQ")
        await asyncio.sleep(0.5)  # a crash loop would redeliver it and add more
        dead = await transport.dead_letters(sub.name)
        assert len(dead) == 1, f"the bad body was dead-lettered {len(dead)} times"
        assert dead[0].raw == body
        assert dead[0].event_id is None
        assert dead[0].attempts == 0
        stats = getattr(sub, "stats", None)
        if stats is not None:
            assert stats.undecodable == 1
        assert got.ids == [after.id]

    async def test_redelivery_after_a_member_dies_without_acking(self) -> None:
        t1 = await self.make_transport()
        if not t1.capabilities.redelivery or not t1.capabilities.consumer_groups:
            pytest.skip("backend does not redeliver within a group")
        taken = asyncio.Event()
        finished = False

        async def hang(event: Event) -> None:
            nonlocal finished
            taken.set()
            await asyncio.Event().wait()
            finished = True

        opts = SubscribeOptions(group="crashy", ack_wait=1.0, max_in_flight=4)
        sub_a = await t1.subscribe("ct.redeliver", hang, opts)
        sent = make_event("ct.redeliver", key="k")
        await t1.publish(sent)
        await asyncio.wait_for(taken.wait(), 10)

        t2 = await self.make_transport()
        survivor = Collector()
        await t2.subscribe("ct.redeliver", survivor, opts)
        died_at = time.monotonic()
        await sub_a.close(timeout=0.1)
        await t1.close(timeout=0.1)
        await self.wait_for(lambda: sent.id in survivor.ids, 1.0 + 15, "the redelivered event")
        took = time.monotonic() - died_at
        assert not finished, "the dead member's handler finished, so nothing was to redeliver"
        assert survivor.ids.count(sent.id) == 1
        assert took < 1.0 + 15

    # ---- lifecycle and health --------------------------------------------------------------

    async def test_closed_subscription_gets_nothing_more(self) -> None:
        transport = await self.make_transport()
        got = Collector()
        sub = await transport.subscribe("ct.closing", got)
        await transport.publish(make_event("ct.closing"))
        await self.wait_for(lambda: got.count() == 1, 10, "the first event")
        await sub.close()
        await sub.close()  # twice is harmless
        await transport.publish(make_event("ct.closing"))
        await asyncio.sleep(0.3)
        assert got.count() == 1

    async def test_close_drains_in_flight_handlers(self) -> None:
        transport = await self.make_transport()
        started = asyncio.Event()
        done: list[str] = []

        async def slow(event: Event) -> None:
            started.set()
            await asyncio.sleep(0.3)
            done.append(event.id)

        await transport.subscribe("ct.drain", slow)
        sent = make_event("ct.drain")
        await transport.publish(sent)
        await asyncio.wait_for(started.wait(), 10)
        await transport.close(timeout=5.0)
        assert done == [sent.id], "close() returned before the in-flight handler finished"
        assert transport.health().state is TransportState.CLOSED

    async def test_health_and_ping(self) -> None:
        transport = await self.make_transport()
        health = transport.health()
        assert health.state is TransportState.CONNECTED and health.ok
        rtt = await transport.ping()
        assert isinstance(rtt, float) and 0 <= rtt < 5
        await transport.close()
        assert not transport.health().ok
        with pytest.raises(TransportError):
            await transport.ping()

    async def test_unreachable_server_is_a_clear_error(self, unreachable_url: str) -> None:
        parts = urlsplit(unreachable_url)
        where = f"{parts.hostname}:{parts.port}"
        transport = open_transport(unreachable_url, **self._options)
        began = time.monotonic()
        try:
            with pytest.raises(TransportError) as info:
                await asyncio.wait_for(transport.start(), 15)
        finally:
            await transport.close(timeout=1.0)
        assert time.monotonic() - began < 10, "start() took too long to give up"
        assert where in str(info.value), f"error does not name {where}: {info.value}"

    async def test_replay_from_earliest(self) -> None:
        transport = await self.make_transport()
        if not transport.capabilities.replay:
            pytest.skip("backend cannot replay from the start")
        events = [make_event("ct.replay", n=i) for i in range(5)]
        await transport.publish_many(events)
        got = Collector()
        await transport.subscribe("ct.replay", got, SubscribeOptions(start="earliest"))
        await self.wait_for(lambda: got.count() >= 5, 10, "5 retained events")
        assert got.ids == [e.id for e in events]

    # ---- stress and restart ----------------------------------------------------------------

    @pytest.mark.timeout(120)
    async def test_stress_concurrent_round_trips(self) -> None:
        """The round trip four times at once, each with its own transport and event types."""
        await asyncio.gather(*(self._round_trip(f"ct.stress{i}", 300) for i in range(4)))

    @pytest.mark.timeout(180)
    async def test_restart_loses_nothing_acked(
        self, restart_server: RestartableServer | None
    ) -> None:
        if restart_server is None:
            pytest.skip("no restart_server fixture for this backend")
        transport = await self.make_transport(url=restart_server.url)
        if not transport.capabilities.persistent:
            pytest.skip("backend is not persistent")
        got = Collector()
        opts = SubscribeOptions(group="survivors", ack_wait=2.0, max_in_flight=16)
        await transport.subscribe("ct.restart", got, opts)
        events = [make_event("ct.restart", key=f"k{i % 8}", n=i) for i in range(1000)]

        async def publish_surely(event: Event) -> None:
            # A publish that raised was not accepted; publishing it again is the caller's job.
            deadline = time.monotonic() + 30
            while True:
                try:
                    await transport.publish(event)
                    return
                except TransportError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        await _publish_in_chunks(transport, events[:500], 50)
        await self.wait_for(lambda: got.count() >= 100, 20, "the stream to be under way")
        await restart_server.restart()
        for event in events[500:]:
            await publish_surely(event)
        want = {e.id for e in events}
        await self.wait_for(lambda: want <= set(got.ids), 60, "all 1,000 events after restart")
        assert set(got.ids) == want, "events that were never published arrived"


async def _ge(value: Awaitable[int], n: int) -> bool:
    return (await value) >= n
