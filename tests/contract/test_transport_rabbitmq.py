"""The transport contract against the shared RabbitMQ (127.0.0.1:5672, guest/guest).

Isolation: this module creates a private vhost (``rabbitmqctl add_vhost``) and deletes it, with
every queue in it, at the end; each test gets its own exchange and queue prefix inside it. Where
``rabbitmqctl`` is not usable (no permission) the tests fall back to vhost ``/`` with unique
exchange/prefix names (durable group queues then outlive the run).

Restart: the shared RabbitMQ must never be stopped, so the ``restart_server`` fixture gives each
restart test its own vhost and its ``restart()`` force-closes every connection in that vhost
(``rabbitmqctl close_all_connections -p <vhost>``). For the client this is what a broker restart
looks like (connection closed by the server, unacked messages requeued, channels, queues and
consumers to restore); the durability of stored messages across a real broker restart is
RabbitMQ's own guarantee for persistent messages in durable queues, which the transport uses.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aio_pika
import pytest

from tests.conftest import require_service
from tests.contract.transport_contract import Collector, TransportContract, make_event
from tidings.retry import RetryPolicy
from tidings.topics import compile_pattern
from tidings.transport import SubscribeOptions, TransportError, subscription_name
from tidings.transports import open_transport
from tidings.transports.rabbitmq import RabbitMQTransport, binding_key, redact_url

HOST, PORT = "127.0.0.1", 5672
USER = "guest"


def _ctl(*args: str) -> bool:
    """Run rabbitmqctl; False when it is missing or refuses (no permission)."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-q", *args], check=False, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _make_vhost() -> str | None:
    name = f"tidings-test-{uuid.uuid4().hex[:10]}"
    if _ctl("add_vhost", name) and _ctl("set_permissions", "-p", name, USER, ".*", ".*", ".*"):
        return name
    return None


def _url(vhost: str | None, **query: str) -> str:
    path = vhost if vhost is not None else "%2F"
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"amqp://{USER}:guest@{HOST}:{PORT}/{path}" + (f"?{q}" if q else "")


def _param(url: str, name: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))[name]


def _base(url: str) -> str:
    """``url`` without the tidings query, for plain aio-pika connections."""
    return urlunsplit(urlsplit(url)._replace(query=""))


@pytest.fixture(scope="module")
def vhost() -> Iterator[str | None]:
    require_service("RabbitMQ", HOST, PORT)
    name = _make_vhost()
    yield name
    if name is not None:
        _ctl("delete_vhost", name)


class _ConnectionKiller:
    """``restart()`` force-closes every connection of a private vhost (see module docstring)."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        tag = uuid.uuid4().hex[:8]
        self.url = _url(vhost, exchange=f"tc-{tag}", prefix=f"tc-{tag}")
        self.kills = 0

    async def restart(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "-q",
            "close_all_connections",
            "-p",
            self.vhost,
            "tidings contract: simulated broker restart",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, f"rabbitmqctl close_all_connections failed: {err.decode()}"
        self.kills += 1


class TestRabbitMQContract(TransportContract):
    @pytest.fixture
    def transport_url(self, vhost: str | None) -> str:
        tag = uuid.uuid4().hex[:10]
        return _url(vhost, exchange=f"tc-{tag}", prefix=f"tc-{tag}")

    @pytest.fixture
    def transport_options(self) -> dict[str, Any]:
        return {"reconnect_interval": 0.5}

    @pytest.fixture
    async def publish_raw(
        self, transport_url: str
    ) -> AsyncIterator[Callable[[bytes, str], Awaitable[None]]]:
        exchange_name = _param(transport_url, "exchange")
        conn = await aio_pika.connect(_base(transport_url))
        channel = await conn.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )

        async def publish(body: bytes, type_hint: str) -> None:
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=type_hint,
                mandatory=False,
            )

        yield publish
        await conn.close()

    @pytest.fixture
    def unreachable_url(self) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"amqp://guest:secret@127.0.0.1:{port}/"

    @pytest.fixture
    def restart_server(self) -> Iterator[_ConnectionKiller | None]:
        require_service("RabbitMQ", HOST, PORT)
        name = _make_vhost()
        if name is None:
            yield None  # no rabbitmqctl permission: the restart test skips
            return
        yield _ConnectionKiller(name)
        _ctl("delete_vhost", name)

    # ---- RabbitMQ specifics ----------------------------------------------------------------

    def test_binding_keys_map_globs_onto_amqp_wildcards(self) -> None:
        cases = {"a.b": "a.b", "a.*": "a.*", "a.**": "a.#", "**.z": "#.z", "a.**.z": "a.#.z"}
        for pattern, key in cases.items():
            assert binding_key(compile_pattern(pattern)) == key
        assert binding_key(compile_pattern("**.**")) == "#"

    def test_url_options_and_redaction(self) -> None:
        t = RabbitMQTransport("amqp://u:s3cret@h:5673/v?exchange=ex&prefix=pf&heartbeat=10")
        health = t.health()
        assert health.detail["exchange"] == "ex"
        assert health.detail["server"] == "h:5673"
        assert health.detail["vhost"] == "v"
        assert "s3cret" not in t.url and "u:***@h:5673" in t.url
        assert redact_url("amqp://h/v") == "amqp://h/v"
        with pytest.raises(TransportError, match="queue_type"):
            RabbitMQTransport("amqp://h/?queue_type=fancy")
        with pytest.raises(TransportError, match="amqp"):
            RabbitMQTransport("http://h/")

    async def test_unreachable_error_hides_the_password(self, unreachable_url: str) -> None:
        transport = open_transport(unreachable_url)
        with pytest.raises(TransportError) as info:
            await transport.start()
        assert "secret" not in str(info.value)
        await transport.close()

    async def test_group_queue_is_quorum_and_counts_redeliveries(self, transport_url: str) -> None:
        """A nacked message comes back with its delivery count (quorum ``x-delivery-count``)."""
        transport = await self.make_transport()
        counts: list[int] = []
        sub = await transport.subscribe("ct.q", Collector(), SubscribeOptions(group="g"))
        inner: Any = sub
        original = inner._dispatcher.submit

        async def spy(msg: Any) -> None:
            counts.append(msg.delivery_count)
            if len(counts) == 1:
                await msg.nack()  # hand it back once
                return
            await original(msg)

        inner._dispatcher.submit = spy
        await transport.publish(make_event("ct.q"))
        await self.wait_for(lambda: len(counts) >= 2, 10, "the redelivery")
        assert counts[:2] == [1, 2]
        conn = await aio_pika.connect(_base(transport_url))
        try:
            channel = await conn.channel()
            # Declaring it as classic must fail: the group queue exists as a quorum queue.
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                await channel.declare_queue(
                    inner.queue_name, durable=True, arguments={"x-queue-type": "classic"}
                )
        finally:
            await conn.close()

    async def test_reading_dead_letters_does_not_consume_them(self) -> None:
        transport = await self.make_transport()

        def refuse(event: Any) -> None:
            raise ValueError("no")

        opts = SubscribeOptions(group="dl", retry=RetryPolicy(max_retries=0))
        sub = await transport.subscribe("ct.dl", refuse, opts)
        events = [make_event("ct.dl", key="k", n=i) for i in range(5)]  # one key: in order
        await transport.publish_many(events)

        async def five() -> bool:
            return len(await transport.dead_letters(sub.name)) == 5

        await self.wait_for(five, 10, "5 dead letters")
        for _ in range(3):  # reading is repeatable and keeps the order
            dead = await transport.dead_letters(sub.name)
            assert [d.event_id for d in dead] == [e.id for e in events]
        assert len(await transport.dead_letters(sub.name, limit=2)) == 2
        assert await transport.dead_letters("no-such-subscription") == []

    async def test_lag_counts_waiting_messages(self) -> None:
        transport = await self.make_transport(lag_interval=0.1)
        gate = asyncio.Event()

        async def blocked(event: Any) -> None:
            await gate.wait()

        await transport.subscribe("ct.lag", blocked, SubscribeOptions(group="lag", max_in_flight=1))
        await transport.publish_many([make_event("ct.lag", key="k") for _ in range(6)])
        await self.wait_for(lambda: transport.health().lag == 5, 10, "lag of 5 waiting messages")
        gate.set()
        await self.wait_for(lambda: transport.health().lag == 0, 10, "lag back to 0")

    @pytest.mark.timeout(60)
    async def test_publish_waits_out_a_dropped_connection(
        self, restart_server: _ConnectionKiller | None
    ) -> None:
        if restart_server is None:
            pytest.skip("rabbitmqctl is not usable here")
        transport = await self.make_transport(url=restart_server.url)
        got = Collector()
        await transport.subscribe("ct.drop", got, SubscribeOptions(group="drop"))
        sent: list[str] = []
        first_batch_done = asyncio.Event()

        async def publish_until_reconnected() -> None:
            # Keep publishing through the drop until the reconnect, then a few batches more.
            extra = 5
            while extra > 0:
                batch = [make_event("ct.drop", n=len(sent) + i) for i in range(50)]
                await transport.publish_many(batch)
                sent.extend(e.id for e in batch)
                first_batch_done.set()
                if transport.health().detail["reconnects"] >= 1:
                    extra -= 1

        publishing = asyncio.create_task(publish_until_reconnected())
        await asyncio.wait_for(first_batch_done.wait(), 10)
        await restart_server.restart()
        # No TransportError: publishes waited for the reconnect and were published again.
        await asyncio.wait_for(publishing, 30)
        want = set(sent)
        await self.wait_for(lambda: want <= set(got.ids), 30, "every event after the drop")
        assert transport.health().ok

    async def test_binding_wider_than_pattern_is_filtered_exactly(self) -> None:
        """A literal ``#`` segment binds as AMQP ``#``; the post-filter keeps only exact matches."""
        transport = await self.make_transport()
        got = Collector()
        sub: Any = await transport.subscribe("ct.#", got)
        await transport.publish(make_event("ct.other"))
        await transport.publish(make_event("ct"))
        literal = make_event("ct.#")
        await transport.publish(literal)
        await self.wait_for(lambda: got.count() >= 1, 10, "the literal '#' event")
        await self.wait_for(lambda: sub.skipped == 2, 10, "the two non-matching events skipped")
        assert got.ids == [literal.id]

    async def test_existing_queue_with_other_arguments_is_used(self, transport_url: str) -> None:
        """A group queue made earlier as classic still works when quorum is the default."""
        prefix = _param(transport_url, "prefix")
        queue = f"{prefix}.{subscription_name('ct.old', 'legacy')}"
        conn = await aio_pika.connect(_base(transport_url))
        try:
            channel = await conn.channel()
            await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "classic"})
        finally:
            await conn.close()
        transport = await self.make_transport()
        got = Collector()
        sub: Any = await transport.subscribe("ct.old", got, SubscribeOptions(group="legacy"))
        assert sub.queue_name == queue
        sent = make_event("ct.old")
        await transport.publish(sent)
        await self.wait_for(lambda: got.ids == [sent.id], 10, "the event via the classic queue")

    async def test_deleted_dlq_is_declared_again_nothing_lost(self, transport_url: str) -> None:
        """A DLQ deleted under a running subscription: the dead letter is nacked, then stored."""
        transport = await self.make_transport()

        def refuse(event: Any) -> None:
            raise ValueError("no")

        opts = SubscribeOptions(group="dlqgone", retry=RetryPolicy(max_retries=0))
        sub: Any = await transport.subscribe("ct.gone", refuse, opts)
        await transport.publish(make_event("ct.gone"))

        async def dead(n: int) -> bool:
            return len(await transport.dead_letters(sub.name)) == n

        await self.wait_for(lambda: dead(1), 10, "the first dead letter")
        conn = await aio_pika.connect(_base(transport_url))
        try:
            channel = await conn.channel()
            await channel.queue_delete(sub.dlq_name, if_unused=False, if_empty=False)
        finally:
            await conn.close()
        second = make_event("ct.gone")
        await transport.publish(second)
        await self.wait_for(lambda: dead(1), 10, "the second dead letter in a new DLQ")
        letters = await transport.dead_letters(sub.name)
        assert [d.event_id for d in letters] == [second.id]
        assert sub.stats.dead == 2

    async def test_max_deliveries_dead_letters_a_process_killer(self) -> None:
        """A message whose consumer keeps dying is dead-lettered, not handed out forever."""
        t1 = await self.make_transport()
        taken = asyncio.Event()

        async def hang(event: Any) -> None:
            taken.set()
            await asyncio.Event().wait()

        opts = SubscribeOptions(group="killer", max_in_flight=1)
        sub_a = await t1.subscribe("ct.kill", hang, opts)
        sent = make_event("ct.kill")
        await t1.publish(sent)
        await asyncio.wait_for(taken.wait(), 10)
        await sub_a.close(timeout=0.1)  # "dies": the message goes back with a delivery count

        t2 = await self.make_transport(max_deliveries=1)
        survivor = Collector()
        sub_b: Any = await t2.subscribe("ct.kill", survivor, opts)

        async def buried() -> bool:
            return len(await t2.dead_letters(sub_b.name)) == 1

        await self.wait_for(buried, 10, "the message dead-lettered after 1 delivery")
        dead = (await t2.dead_letters(sub_b.name))[0]
        assert dead.event_id == sent.id and dead.attempts == 1
        assert "without an ack" in dead.error
        assert survivor.count() == 0, "the handler ran a message over its delivery limit"
        assert sub_b.stats.dead == 1
        with pytest.raises(TransportError, match="max_deliveries"):
            open_transport("amqp://h/?max_deliveries=0")
