"""``python -m bench transports``: every transport end to end, beside FastStream and the raw client.

Goals (issue 4, 2-core machine): every backend >= 50% of its raw client floor end to end and at
least 3x FastStream where FastStream has that backend; p99 publish -> handler latency under 10 ms
at 1,000 events/s offered. One round publishes N small events and waits until the consumer has
handled every one; the clock runs from the first publish to the last handler call.

Per backend, in one process run, interleaved round-robin (order rotated each round):

- **tidings**: ``open_transport(url)``, ``publish_many`` in chunks of 1,000, one subscription
  (``group="bench"``, ``max_in_flight=256``) whose async handler takes the decoded Event;
- **FastStream 0.7** on the same broker (none for memory and PostgreSQL): one subscriber whose
  handler takes the body FastStream parsed (``body: dict``) and builds the Event from it
  (``from_dict``), ``logger=None``; each event is published with an awaited ``broker.publish``
  (Kafka: ``publish_batch`` per 64, what fits in one aiokafka batch);
- **the raw client floor**, used well: batched and pipelined, acks batched or async.

Every side encodes each event with ``tidings.event.encode`` and its consumer decodes it back
into an Event, so the envelope costs the same everywhere. Every handled event id is counted per
round: a lost, duplicated or stray event is reported and the run exits 1. A backend (or leg)
that cannot be set up or fails mid-run is printed as skipped with its reason, never dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

from bench import Contender, Kind, fmt_duration, fmt_rate, machine_lines, percentile, run_rounds
from tidings.event import Event, decode, encode, from_dict
from tidings.transport import SubscribeOptions, Transport, TransportSubscription
from tidings.transports import open_transport, redact_url

DESCRIPTION = "Every transport end to end, beside FastStream and the raw client floor."
TYPE = "bench.tx.tick"
LAT_TYPE = "bench.tx.lat"
CHUNK = 1_000  # events per publish_many / pipeline / gathered batch
FS_KAFKA_BATCH = 64  # FastStream's publish_batch fills one aiokafka batch (16 KiB by default)
IN_FLIGHT = 256  # tidings max_in_flight, raw prefetch / claim / read sizes
BACKENDS = ("memory", "redis", "nats", "nats-core", "kafka", "rabbitmq", "postgres")
HOST = "127.0.0.1"
REDIS = f"redis://{HOST}:6379/0"
NATS = f"nats://{HOST}:4222"
PG = f"postgresql://postgres@{HOST}:5432/postgres"
AMQP_USER = "guest:guest"


# ---- one round's work and what a consumer saw ----------------------------------------------


@dataclass(slots=True)
class Round:
    """N distinct small events, built before the clock starts; ``ids`` is what must arrive."""

    events: list[Event]
    ids: frozenset[str]

    @property
    def n(self) -> int:
        return len(self.events)


def make_round(n: int) -> Round:
    events = [Event(type=TYPE, source="bench", data={"i": i}) for i in range(n)]
    return Round(events, frozenset(e.id for e in events))


class Sink:
    """Event ids a leg's consumer handled this round; ``done`` fires at the round's count."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.target = 0
        self.done = asyncio.Event()

    def reset(self, n: int) -> None:
        self.ids = []
        self.target = n
        self.done.clear()

    def put(self, event_id: str) -> None:
        self.ids.append(event_id)
        if len(self.ids) >= self.target:
            self.done.set()

    def put_raw(self, body: bytes) -> None:
        self.put(decode(body).id)

    def check(self, name: str, r: Round) -> str | None:
        got = set(self.ids)
        if len(self.ids) == r.n and got == r.ids:
            return None
        return (
            f"{name}: {len(self.ids):,} deliveries for {r.n:,} events: "
            f"{len(r.ids - got):,} lost, {len(self.ids) - len(got):,} duplicated, "
            f"{len(got - r.ids):,} unexpected"
        )


def chunks(items: Sequence[Any], size: int = CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Leg:
    """One contender on one backend: set up once, then a round publishes and waits for all."""

    kind: Kind = "floor"

    def __init__(self, backend: str, label: str) -> None:
        self.backend = backend
        self.label = label
        self.sink = Sink()
        self.failed: str | None = None

    async def setup(self) -> None: ...

    async def publish(self, events: list[Event]) -> None:
        raise NotImplementedError

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        """A background consumer whose crash marks the leg failed (not a silent loss)."""

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed = f"consumer crashed: {_reason(exc)}"
                self.sink.done.set()

        return asyncio.create_task(guarded())

    async def close(self) -> None: ...


# ---- tidings ---------------------------------------------------------------------------------


class TidingsLeg(Leg):
    kind: Kind = "tidings"

    def __init__(self, backend: str, url: str, **options: Any) -> None:
        super().__init__(backend, "tidings")
        self.url = url
        self.options = options
        self.transport: Transport | None = None
        self.sub: TransportSubscription | None = None

    async def setup(self) -> None:
        self.transport = open_transport(self.url, **self.options)
        await self.transport.start()
        put = self.sink.put

        async def handle(event: Event) -> None:
            put(event.id)

        self.sub = await self.transport.subscribe(
            TYPE, handle, SubscribeOptions(group="bench", max_in_flight=IN_FLIGHT)
        )

    async def publish(self, events: list[Event]) -> None:
        assert self.transport is not None
        publish_many = self.transport.publish_many
        for chunk in chunks(events):
            await publish_many(chunk)

    async def close_subscription(self) -> None:
        if self.sub is not None:
            sub, self.sub = self.sub, None
            await sub.close(timeout=5.0)

    async def close(self) -> None:
        await self.close_subscription()
        if self.transport is not None:
            await self.transport.close(timeout=5.0)


# ---- memory ----------------------------------------------------------------------------------


class QueueFloor(Leg):
    """asyncio.Queue hand-off of encoded bodies to one consumer task that decodes them."""

    def __init__(self) -> None:
        super().__init__("memory", "asyncio.Queue floor")
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(10_000)
        self.task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        async def consume() -> None:
            get, put = self.queue.get, self.sink.put_raw
            while True:
                put(await get())

        self.task = self.spawn(consume())

    async def publish(self, events: list[Event]) -> None:
        put = self.queue.put
        for e in events:
            await put(encode(e))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


# ---- redis -----------------------------------------------------------------------------------


class RedisFloor(Leg):
    """redis-py: pipelined XADD per 1,000, XREADGROUP COUNT 1,000, one XACK per batch."""

    def __init__(self, key: str) -> None:
        super().__init__("redis", "raw redis-py floor")
        self.key = key
        self.task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        Redis = _need("redis.asyncio").Redis
        self.pub = Redis.from_url(REDIS)
        self.sub = Redis.from_url(REDIS)
        await self.pub.xgroup_create(self.key, "g", id="$", mkstream=True)
        self.task = self.spawn(self.consume())

    async def consume(self) -> None:
        read, ack, put = self.sub.xreadgroup, self.sub.xack, self.sink.put_raw
        while True:
            resp = await read("g", "c1", {self.key: ">"}, count=1000, block=100)
            for _stream, entries in resp or ():
                for _eid, fields in entries:
                    put(fields[b"e"])
                if entries:
                    await ack(self.key, "g", *[eid for eid, _ in entries])

    async def publish(self, events: list[Event]) -> None:
        for chunk in chunks(events):
            pipe = self.pub.pipeline(transaction=False)
            for e in chunk:
                pipe.xadd(self.key, {"e": encode(e)})
            await pipe.execute()

    async def close(self) -> None:
        await _cancel(self.task)
        await self.sub.aclose()
        await self.pub.aclose()


class FastStreamLeg(Leg):
    """FastStream: a broker with one subscriber; ``publish_all`` is set by the backend's maker."""

    kind: Kind = "peer"

    def __init__(self, backend: str, make: Callable[[FastStreamLeg], Awaitable[None]]) -> None:
        super().__init__(backend, "FastStream")
        self.make = make
        self.broker: Any = None
        self.publish_all: Callable[[list[Event]], Awaitable[None]] | None = None
        self.cleanup: Callable[[], Awaitable[None]] | None = None

    async def setup(self) -> None:
        await self.make(self)

    async def handle(self, body: dict[str, Any]) -> None:
        # FastStream has parsed the JSON body already (its documented way: a typed argument);
        # building the Event from it is the same envelope work the other legs do.
        self.sink.put(from_dict(body).id)

    async def publish(self, events: list[Event]) -> None:
        assert self.publish_all is not None
        await self.publish_all(events)

    async def close(self) -> None:
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.stop()
        if self.cleanup is not None:
            with contextlib.suppress(Exception):
                await self.cleanup()


def faststream_redis(key: str) -> Callable[[FastStreamLeg], Awaitable[None]]:
    async def make(leg: FastStreamLeg) -> None:
        fs = _need("faststream.redis")
        RedisBroker, StreamSub = fs.RedisBroker, fs.StreamSub

        broker = RedisBroker(REDIS, logger=None)
        sub = StreamSub(key, group="fs", consumer="c1", max_records=IN_FLIGHT)
        broker.subscriber(stream=sub)(leg.handle)
        await broker.start()
        leg.broker = broker

        async def publish_all(events: list[Event]) -> None:
            publish = broker.publish
            for e in events:
                await publish(encode(e), stream=key)

        leg.publish_all = publish_all

    return make


# ---- nats ------------------------------------------------------------------------------------


class JetStreamFloor(Leg):
    """nats-py: ``publish_async`` with PubAcks gathered per 1,000; pull ``fetch(1000)`` + ack."""

    def __init__(self, stream: str, subject: str) -> None:
        super().__init__("nats", "raw nats-py floor")
        self.stream, self.subject = stream, subject
        self.task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        self.nc = await _need("nats").connect(NATS)
        self.js = self.nc.jetstream()
        await self.js.add_stream(name=self.stream, subjects=[self.subject])
        self.psub = await self.js.pull_subscribe(self.subject, durable="raw", stream=self.stream)
        self.task = self.spawn(self.consume())

    async def consume(self) -> None:
        timeouts = (_need("nats.errors").TimeoutError, TimeoutError)
        fetch, put = self.psub.fetch, self.sink.put_raw
        while True:
            try:
                msgs = await fetch(CHUNK, timeout=0.2)  # 1,000 beat 256 here: 9,000 vs 6,800/s
            except timeouts:
                continue  # nothing waiting: nats-py raises either, by version and path
            for m in msgs:
                put(m.data)
                await m.ack()

    async def publish(self, events: list[Event]) -> None:
        publish_async = self.js.publish_async
        for chunk in chunks(events):
            futures = [await publish_async(self.subject, encode(e)) for e in chunk]
            await asyncio.gather(*futures)

    async def close(self) -> None:
        await _cancel(self.task)
        with contextlib.suppress(Exception):
            await self.js.delete_stream(self.stream)
        await self.nc.close()


class CoreNatsFloor(Leg):
    """nats-py core: ``publish`` per event (buffered), one flush; a callback subscription."""

    def __init__(self, subject: str) -> None:
        super().__init__("nats-core", "raw nats-py floor")
        self.subject = subject

    async def setup(self) -> None:
        self.nc = await _need("nats").connect(NATS)
        put = self.sink.put_raw

        async def cb(msg: Any) -> None:
            put(msg.data)

        await self.nc.subscribe(self.subject, queue="raw", cb=cb)
        await self.nc.flush()

    async def publish(self, events: list[Event]) -> None:
        publish = self.nc.publish
        for e in events:
            await publish(self.subject, encode(e))
        await self.nc.flush()

    async def close(self) -> None:
        await self.nc.close()


def faststream_jetstream(stream: str, subject: str) -> Callable[[FastStreamLeg], Awaitable[None]]:
    async def make(leg: FastStreamLeg) -> None:
        fs = _need("faststream.nats")
        JStream, NatsBroker, PullSub = fs.JStream, fs.NatsBroker, fs.PullSub

        broker = NatsBroker(NATS, logger=None)
        js = JStream(stream, subjects=[subject])
        broker.subscriber(
            subject, stream=js, durable="fs", pull_sub=PullSub(batch_size=IN_FLIGHT, timeout=0.2)
        )(leg.handle)
        await broker.start()
        leg.broker = broker

        async def publish_all(events: list[Event]) -> None:
            publish = broker.publish
            for e in events:
                await publish(encode(e), subject, stream=stream)

        async def cleanup() -> None:
            nc = await _need("nats").connect(NATS)
            try:
                await nc.jetstream().delete_stream(stream)
            finally:
                await nc.close()

        leg.publish_all = publish_all
        leg.cleanup = cleanup

    return make


def faststream_core(subject: str) -> Callable[[FastStreamLeg], Awaitable[None]]:
    async def make(leg: FastStreamLeg) -> None:
        NatsBroker = _need("faststream.nats").NatsBroker

        broker = NatsBroker(NATS, logger=None)
        broker.subscriber(subject, queue="fs")(leg.handle)
        await broker.start()
        leg.broker = broker

        async def publish_all(events: list[Event]) -> None:
            publish = broker.publish
            for e in events:
                await publish(encode(e), subject)

        leg.publish_all = publish_all

    return make


async def _drop_streams(*names: str) -> None:
    nc = await _need("nats").connect(NATS, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
    finally:
        await nc.close()


# ---- kafka -----------------------------------------------------------------------------------


async def _create_topics(bootstrap: str, *names: str, partitions: int = 4) -> None:
    admin_mod = _need("aiokafka.admin")
    AIOKafkaAdminClient, NewTopic = admin_mod.AIOKafkaAdminClient, admin_mod.NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


class KafkaFloor(Leg):
    """aiokafka: ``send()`` futures gathered per 1,000; ``getmany`` + one commit per batch."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__("kafka", "raw aiokafka floor")
        self.bootstrap, self.topic = bootstrap, topic
        self.task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        aiokafka = _need("aiokafka")
        AIOKafkaConsumer, AIOKafkaProducer = aiokafka.AIOKafkaConsumer, aiokafka.AIOKafkaProducer

        await _create_topics(self.bootstrap, self.topic)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id="raw",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        await self.consumer.start()
        self.task = self.spawn(self.consume())

    async def consume(self) -> None:
        getmany, commit, put = self.consumer.getmany, self.consumer.commit, self.sink.put_raw
        while True:
            batches = await getmany(timeout_ms=100, max_records=1000)
            for records in batches.values():
                for rec in records:
                    put(rec.value)
            if batches:
                await commit()

    async def publish(self, events: list[Event]) -> None:
        send = self.producer.send
        for chunk in chunks(events):
            futures = [await send(self.topic, encode(e)) for e in chunk]
            await asyncio.gather(*futures)

    async def close(self) -> None:
        await _cancel(self.task)
        await self.consumer.stop()
        await self.producer.stop()


def faststream_kafka(bootstrap: str, topic: str) -> Callable[[FastStreamLeg], Awaitable[None]]:
    async def make(leg: FastStreamLeg) -> None:
        KafkaBroker = _need("faststream.kafka").KafkaBroker

        await _create_topics(bootstrap, topic)
        broker = KafkaBroker(bootstrap, logger=None)
        broker.subscriber(
            topic,
            group_id="fs",
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )(leg.handle)
        await broker.start()
        leg.broker = broker

        async def publish_all(events: list[Event]) -> None:
            for chunk in chunks(events, FS_KAFKA_BATCH):
                await broker.publish_batch(*[encode(e) for e in chunk], topic=topic)

        leg.publish_all = publish_all

    return make


# ---- rabbitmq --------------------------------------------------------------------------------


class RabbitFloor(Leg):
    """aio-pika: publisher confirms gathered per 1,000 (persistent, quorum queue, as tidings);
    a consumer with ``prefetch_count=256`` acking each message."""

    def __init__(self, base: str, exchange: str, queue: str) -> None:
        super().__init__("rabbitmq", "raw aio-pika floor")
        self.base, self.exchange_name, self.queue_name = base, exchange, queue

    async def setup(self) -> None:
        aio_pika = _need("aio_pika")
        self.conn = await aio_pika.connect(self.base)
        pub = await self.conn.channel(publisher_confirms=True)
        self.exchange = await pub.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        sub = await self.conn.channel()
        await sub.set_qos(prefetch_count=IN_FLIGHT)
        queue = await sub.declare_queue(
            self.queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(self.exchange_name, routing_key="bench.#")
        put = self.sink.put_raw

        async def on_message(msg: Any) -> None:
            put(msg.body)
            await msg.ack()

        await queue.consume(on_message)
        self.persistent = aio_pika.DeliveryMode.PERSISTENT
        self.message = aio_pika.Message

    async def publish(self, events: list[Event]) -> None:
        publish, message, mode = self.exchange.publish, self.message, self.persistent
        for chunk in chunks(events):
            await asyncio.gather(
                *[publish(message(encode(e), delivery_mode=mode), routing_key=TYPE) for e in chunk]
            )

    async def close(self) -> None:
        await self.conn.close()


def faststream_rabbit(
    base: str, exchange: str, queue: str
) -> Callable[[FastStreamLeg], Awaitable[None]]:
    async def make(leg: FastStreamLeg) -> None:
        fs = _need("faststream.rabbit")

        broker = fs.RabbitBroker(base, logger=None)
        exch = fs.RabbitExchange(exchange, type=fs.ExchangeType.TOPIC, durable=True)
        q = fs.RabbitQueue(
            queue, durable=True, queue_type=fs.QueueType.QUORUM, routing_key="bench.#"
        )
        broker.subscriber(q, exch, channel=fs.Channel(prefetch_count=IN_FLIGHT))(leg.handle)
        await broker.start()
        leg.broker = broker

        async def publish_all(events: list[Event]) -> None:
            publish = broker.publish
            for e in events:
                await publish(encode(e), exchange=exch, routing_key=TYPE, persist=True)

        leg.publish_all = publish_all

    return make


# ---- postgres --------------------------------------------------------------------------------


class PostgresFloor(Leg):
    """psycopg: COPY per 1,000 in one transaction; a consumer claiming 256 rows with
    ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``, decoding them,
    then one ``DELETE ... WHERE id = ANY(...)`` per batch (ack after handling, as a queue must)."""

    def __init__(self, schema: str) -> None:
        super().__init__("postgres", "raw psycopg floor")
        self.schema = schema
        self.task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        psycopg = _need("psycopg")
        self.pub = await psycopg.AsyncConnection.connect(PG, autocommit=True)
        self.sub = await psycopg.AsyncConnection.connect(PG, autocommit=True)
        s = self.schema
        await self.pub.execute(f'CREATE SCHEMA "{s}"')
        await self.pub.execute(
            f'CREATE TABLE "{s}".q (id bigserial PRIMARY KEY, body bytea NOT NULL, '
            "leased_until timestamptz)"
        )
        self.task = self.spawn(self.consume())

    async def consume(self) -> None:
        s = self.schema
        claim = (
            f"UPDATE \"{s}\".q SET leased_until = now() + interval '30 seconds' WHERE id IN "
            f'(SELECT id FROM "{s}".q WHERE leased_until IS NULL OR leased_until < now() '
            f"ORDER BY id LIMIT {IN_FLIGHT} FOR UPDATE SKIP LOCKED) RETURNING id, body"
        )
        delete = f'DELETE FROM "{s}".q WHERE id = ANY(%s)'
        put = self.sink.put_raw
        while True:
            cur = await self.sub.execute(claim)
            rows = await cur.fetchall()
            if not rows:
                await asyncio.sleep(0.002)
                continue
            for _id, body in rows:
                put(bytes(body))
            await self.sub.execute(delete, ([r[0] for r in rows],))

    async def publish(self, events: list[Event]) -> None:
        copy_sql = f'COPY "{self.schema}".q (body) FROM STDIN'
        for chunk in chunks(events):
            async with self.pub.transaction(), self.pub.cursor().copy(copy_sql) as copy:
                for e in chunk:
                    await copy.write_row((encode(e),))

    async def close(self) -> None:
        await _cancel(self.task)
        with contextlib.suppress(Exception):
            await self.pub.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        await self.sub.close()
        await self.pub.close()


# ---- backends: their legs, URLs and cleanup --------------------------------------------------


@dataclass
class Backend:
    name: str
    legs: list[Leg]
    url: str  # the tidings URL, redacted, for the header
    cleanup: Callable[[], Awaitable[None]] | None = None
    skipped: str | None = None

    @property
    def tidings(self) -> TidingsLeg:
        leg = self.legs[0]
        assert isinstance(leg, TidingsLeg)
        return leg


def _need(module: str) -> Any:
    """Import a client library when its leg is set up: a missing one skips that leg only."""
    return importlib.import_module(module)


def _tansu() -> Any:
    """The tests' private-Tansu helper (the project root is on sys.path under ``-m bench``)."""
    try:
        return _need("tests.contract.tansu").TansuBroker
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        return _need("tests.contract.tansu").TansuBroker


def _rabbitmqctl(*args: str) -> bool:
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-q", *args], check=False, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


async def build_backend(name: str, tag: str) -> Backend:
    """The legs of one backend with names unique to this run (``tag``); nothing connects yet."""
    if name == "memory":
        url = f"memory://bench-{tag}"
        return Backend(name, [TidingsLeg(name, url), QueueFloor()], url)
    if name == "redis":
        prefix = f"bench-{tag}"
        url = f"{REDIS}?prefix={prefix}"

        async def drop_keys() -> None:
            r = _need("redis.asyncio").Redis.from_url(REDIS)
            try:
                keys = [k async for k in r.scan_iter(match=f"{prefix}*", count=1000)]
                if keys:
                    await r.delete(*keys)
            finally:
                await r.aclose()

        legs: list[Leg] = [
            TidingsLeg(name, url),
            RedisFloor(f"{prefix}-raw"),
            FastStreamLeg(name, faststream_redis(f"{prefix}-fs")),
        ]
        return Backend(name, legs, url, drop_keys)
    if name == "nats":
        stream, prefix = f"BENCH_{tag}", f"bench_{tag}"
        url = f"{NATS}?stream={stream}&prefix={prefix}"
        raw, fs = f"BENCHRAW_{tag}", f"BENCHFS_{tag}"
        legs = [
            TidingsLeg(name, url),
            JetStreamFloor(raw, f"benchraw_{tag}.ev"),
            FastStreamLeg(name, faststream_jetstream(fs, f"benchfs_{tag}.ev")),
        ]
        return Backend(name, legs, url, lambda: _drop_streams(stream, f"{stream}_DLQ", raw, fs))
    if name == "nats-core":
        url = f"{NATS}?mode=core&prefix=benchc_{tag}"
        legs = [
            TidingsLeg(name, url),
            CoreNatsFloor(f"benchcraw_{tag}.ev"),
            FastStreamLeg(name, faststream_core(f"benchcfs_{tag}.ev")),
        ]
        return Backend(name, legs, url)
    if name == "kafka":
        broker = _tansu()()
        await asyncio.to_thread(broker.start)
        url = f"{broker.url}?prefix=bench{tag}.&session_timeout=2"

        async def stop() -> None:
            await asyncio.to_thread(broker.stop)

        legs = [
            TidingsLeg(name, url),
            KafkaFloor(broker.bootstrap, f"bench{tag}.raw"),
            FastStreamLeg(name, faststream_kafka(broker.bootstrap, f"bench{tag}.fs")),
        ]
        return Backend(name, legs, f"{url} (private Tansu, memory storage)", stop)
    if name == "rabbitmq":
        vhost = f"tidings-bench-{tag}"
        made = await asyncio.to_thread(
            _rabbitmqctl, "add_vhost", vhost
        ) and await asyncio.to_thread(
            _rabbitmqctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"
        )
        path = vhost if made else "%2F"
        base = f"amqp://{AMQP_USER}@{HOST}:5672/{path}"
        url = f"{base}?exchange=bench-{tag}&prefix=bench-{tag}"

        async def drop() -> None:
            if made:
                await asyncio.to_thread(_rabbitmqctl, "delete_vhost", vhost)
            else:
                await _drop_rabbit(base, tag)

        legs = [
            TidingsLeg(name, url),
            RabbitFloor(base, f"benchraw-{tag}", f"benchraw-{tag}.q"),
            FastStreamLeg(name, faststream_rabbit(base, f"benchfs-{tag}", f"benchfs-{tag}.q")),
        ]
        return Backend(name, legs, url, drop)
    if name == "postgres":
        schema = f"bench_tx_{tag}"
        raw = f"bench_raw_{tag}"
        url = f"{PG}?schema={schema}&application_name=tidings-bench-{tag}"

        async def drop_schema() -> None:
            psycopg = _need("psycopg")
            async with await psycopg.AsyncConnection.connect(PG, autocommit=True) as conn:
                for name_ in (schema, raw):
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{name_}" CASCADE')

        legs = [TidingsLeg(name, url), PostgresFloor(raw)]
        return Backend(name, legs, url, drop_schema)
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


async def _drop_rabbit(base: str, tag: str) -> None:
    """Without a private vhost: delete what this run declared on vhost ``/``."""
    conn = await _need("aio_pika").connect(base)
    try:
        for queue in (f"benchraw-{tag}.q", f"benchfs-{tag}.q"):
            ch = await conn.channel()
            with contextlib.suppress(Exception):
                await ch.queue_delete(queue)
        for exchange in (f"bench-{tag}", f"benchraw-{tag}", f"benchfs-{tag}"):
            ch = await conn.channel()
            with contextlib.suppress(Exception):
                await ch.exchange_delete(exchange)
    finally:
        await conn.close()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {redact_url(text)[:160]}"


# ---- running ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Options:
    events: int
    rounds: int
    warmup: int
    rate: int
    latency_seconds: float
    round_limit: float
    only: tuple[str, ...]
    quick: bool


def parse(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench transports", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="smoke test: 2,000 events, 1 round")
    p.add_argument("--only", help=f"comma-separated backends (default all: {','.join(BACKENDS)})")
    p.add_argument("--events", type=int, help="events per round (default 20,000; quick 2,000)")
    p.add_argument("--rounds", type=int, help="measured rounds (default 3; quick 1)")
    p.add_argument("--rate", type=int, default=1_000, help="latency offered rate, events/s")
    p.add_argument("--latency-seconds", type=float, help="latency run (default 3; quick 1)")
    a = p.parse_args(list(argv))
    quick: bool = a.quick
    only = tuple(BACKENDS)
    if a.only:
        only = tuple(s.strip() for s in a.only.split(",") if s.strip())
        bad = [s for s in only if s not in BACKENDS]
        if bad:
            p.error(f"--only: unknown backend(s) {', '.join(bad)}; expected {', '.join(BACKENDS)}")
    events = a.events if a.events is not None else (2_000 if quick else 20_000)
    rounds = a.rounds if a.rounds is not None else (1 if quick else 3)
    if events < 100 or rounds < 1:
        p.error("--events must be >= 100 and --rounds >= 1")
    return Options(
        events=events,
        rounds=rounds,
        warmup=max(100, events // 10),
        rate=a.rate,
        latency_seconds=a.latency_seconds or (1.0 if quick else 3.0),
        round_limit=60.0 if quick else 300.0,
        only=only,
        quick=quick,
    )


async def _one_round(leg: Leg, r: Round, limit: float) -> float:
    leg.sink.reset(r.n)
    t0 = perf_counter()
    await leg.publish(r.events)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(leg.sink.done.wait(), limit)
    return perf_counter() - t0


def contender(loop: asyncio.AbstractEventLoop, leg: Leg, limit: float) -> Contender[Round]:
    """A ``bench.Contender`` that runs one round of ``leg`` in the shared loop; a leg that
    raises is marked skipped with the reason (its later rounds do nothing)."""
    name = f"transports.{leg.backend} {leg.label}"
    c: Contender[Round]

    def run(r: Round) -> float:
        if leg.failed is not None:
            return 0.0
        try:
            seconds = loop.run_until_complete(_one_round(leg, r, limit))
        except Exception as exc:
            leg.failed = f"failed mid-run: {_reason(exc)}"
        if leg.failed is not None:
            c.skipped = leg.failed
            return 0.0
        return seconds

    def check(r: Round) -> str | None:
        return None if leg.failed is not None else leg.sink.check(name, r)

    c = Contender(f"{leg.backend}.{leg.label}", leg.label, leg.kind, run, check)
    return c


@dataclass(slots=True)
class Latency:
    count: int
    achieved: float
    p50: float
    p99: float
    worst: float
    error: str | None


async def measure_latency(leg: TidingsLeg, opts: Options) -> Latency:
    """Paced single ``publish`` calls (each in its own task, so a slow commit does not hold the
    next one back); latency = handler's clock - the clock just before that publish started."""
    await leg.close_subscription()
    assert leg.transport is not None
    transport = leg.transport
    count = max(100, int(opts.rate * opts.latency_seconds))
    seen: list[float] = []
    got: list[int] = []
    done = asyncio.Event()
    clock = perf_counter
    target = [0]

    async def handle(event: Event) -> None:
        seq = event.data["seq"]
        seen[seq] = clock()
        got.append(seq)
        if len(got) >= target[0]:
            done.set()

    sub = await transport.subscribe(
        LAT_TYPE, handle, SubscribeOptions(group="bench-lat", max_in_flight=IN_FLIGHT)
    )
    interval = 1.0 / opts.rate

    async def paced(n: int) -> list[float]:
        events = [Event(type=LAT_TYPE, source="bench", data={"seq": i}) for i in range(n)]
        sent = [0.0] * n
        seen[:] = [0.0] * n
        got.clear()
        target[0] = n
        done.clear()
        tasks: list[asyncio.Task[None]] = []
        start = clock() + 0.002
        for i, e in enumerate(events):
            delay = start + i * interval - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[i] = clock()
            tasks.append(asyncio.create_task(transport.publish(e)))
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise RuntimeError(
                f"{len(failed):,} of {n:,} paced publishes failed, first: {_reason(failed[0])}"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 15.0)
        return sent

    try:
        await paced(max(100, count // 10))  # warm-up
        sent = await paced(count)
    finally:
        await sub.close(timeout=5.0)
    error = None
    if sorted(got) != list(range(count)):
        error = (
            f"transports.{leg.backend} latency: {len(got):,} deliveries for {count:,} events, "
            f"{count - len(set(got)):,} lost, {len(got) - len(set(got)):,} duplicated"
        )
    delays = sorted(seen[i] - sent[i] for i in range(count) if seen[i])
    span = sent[-1] - sent[0]
    return Latency(
        count=count,
        achieved=(count - 1) / span if span > 0 else 0.0,
        p50=percentile(delays, 50),
        p99=percentile(delays, 99),
        worst=delays[-1] if delays else float("nan"),
        error=error,
    )


async def _setup(backend: Backend) -> None:
    """Connect every leg; a leg that cannot be set up is skipped with its reason."""
    for leg in backend.legs:
        try:
            await asyncio.wait_for(leg.setup(), 60.0)
        except Exception as exc:
            leg.failed = f"setup failed: {_reason(exc)}"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(leg.close(), 10.0)


async def _close(backend: Backend) -> None:
    for leg in backend.legs:
        if leg.failed is not None and leg.failed.startswith("setup failed"):
            continue
        with contextlib.suppress(Exception):
            await asyncio.wait_for(leg.close(), 15.0)


def _shutdown(loop: asyncio.AbstractEventLoop, backends: list[Backend], *, graceful: bool) -> None:
    """Close every leg, then drop what this run created (streams, keys, schemas, vhost, Tansu).

    After an interrupt the legs' own tasks are cancelled instead of closed: what matters then
    is that the shared servers are left clean.
    """
    if not graceful:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    for backend in backends:
        if graceful and backend.legs:
            with contextlib.suppress(BaseException):
                loop.run_until_complete(_close(backend))
        if backend.cleanup is not None:
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.wait_for(backend.cleanup(), 30.0))
    loop.close()


def _line(backend: Backend, by_leg: dict[int, Contender[Round]]) -> str:
    name = f"transports.{backend.name}"
    if backend.skipped is not None:
        return f"{name}: skipped ({backend.skipped})"
    cs = [by_leg[id(leg)] for leg in backend.legs]
    main, others = cs[0], cs[1:]
    shown = [main.versus(o) for o in others]
    if backend.name in ("memory", "postgres"):
        shown.append("FastStream skipped (no FastStream broker for this backend)")
    return " · ".join([f"{name}: {main.summary()}", *shown])


def _goal(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def goals(
    backends: Sequence[Backend],
    by_leg: dict[int, Contender[Round]],
    latencies: dict[str, Latency | str],
) -> list[str]:
    """Issue 4's goals per backend, from this run's medians (the ratios are what holds)."""
    lines = ["goals (issue 4): tidings >= 0.5 of the raw floor, >= 3x FastStream, p99 < 10 ms"]
    for backend in backends:
        if backend.skipped is not None or not backend.legs:
            continue
        main, *others = [by_leg[id(leg)] for leg in backend.legs]
        parts = []
        for o in others:
            if main.rates and o.rates and o.median:
                ratio = main.median / o.median
                if o.kind == "floor":
                    parts.append(f"vs floor {ratio:.2f} {_goal(ratio >= 0.5)}")
                else:
                    parts.append(f"vs FastStream {ratio:.1f}x {_goal(ratio >= 3)}")
            else:
                parts.append(f"vs {o.label}: no figure")
        lat = latencies.get(backend.name)
        if isinstance(lat, Latency):
            parts.append(f"p99 {fmt_duration(lat.p99)} {_goal(lat.p99 < 0.010)}")
        else:
            parts.append("p99: no figure")
        lines.append(f"  {backend.name}: {'; '.join(parts)}")
    return lines


def _load() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] = ()) -> int:
    opts = parse(argv)
    t_start = perf_counter()
    load_start = _load()
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the finally below still drops this run's
    # streams, schemas, vhost and private Tansu.
    previous = signal.signal(signal.SIGTERM, _terminate)
    logging.getLogger("faststream").setLevel(logging.CRITICAL)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    tag = uuid.uuid4().hex[:8]
    loop = asyncio.new_event_loop()
    backends: list[Backend] = []
    progress = None if opts.quick else (lambda msg: print(msg, file=sys.stderr, flush=True))
    latencies: dict[str, Latency | str] = {}
    by_leg: dict[int, Contender[Round]] = {}
    rounds = 0
    graceful = True
    try:
        for name in opts.only:
            try:
                backend = loop.run_until_complete(build_backend(name, tag))
            except Exception as exc:
                backends.append(Backend(name, [], "", skipped=f"setup failed: {_reason(exc)}"))
                continue
            backends.append(backend)
            loop.run_until_complete(_setup(backend))
            if progress is not None:
                progress(f"{name}: set up ({perf_counter() - t_start:.1f}s)")
        contenders: list[Contender[Round]] = []
        for backend in backends:
            for leg in backend.legs:
                c = contender(loop, leg, opts.round_limit)
                if leg.failed is not None:
                    c.run, c.skipped = None, leg.failed
                by_leg[id(leg)] = c
                contenders.append(c)
        gc.collect()
        rounds = run_rounds(
            contenders,
            lambda _i: make_round(opts.events),
            warmup=make_round(opts.warmup),
            min_rounds=opts.rounds,
            max_rounds=opts.rounds,
            budget=float("inf"),
            progress=progress,
        )
        for backend in backends:
            if backend.skipped is not None or not backend.legs:
                continue
            leg = backend.tidings
            if leg.failed is not None:
                latencies[backend.name] = leg.failed
                continue
            try:
                latencies[backend.name] = loop.run_until_complete(measure_latency(leg, opts))
            except Exception as exc:
                latencies[backend.name] = f"failed: {_reason(exc)}"
    except BaseException:
        graceful = False
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        _shutdown(loop, backends, graceful=graceful)
        signal.signal(signal.SIGTERM, previous)

    sample = len(encode(make_round(1).events[0]))
    lines = [
        f"bench transports{' --quick' if opts.quick else ''}: {rounds} round"
        f"{'s' if rounds != 1 else ''} of {opts.events:,} events per contender "
        f"(+1 warm-up round of {opts.warmup:,}), round-robin across every backend's "
        "contenders, order rotated each round; figures are end-to-end events/s (first publish "
        "until the last event is handled)",
        f"event: Event(type={TYPE!r}, source='bench', data={{'i': n}}), {sample} bytes encoded, "
        "no key; every side encodes with tidings.event.encode and decodes in its consumer",
        f"tidings: open_transport(url), publish_many per {CHUNK:,}, one subscription "
        f"group='bench', max_in_flight={IN_FLIGHT}",
        f"FastStream: one subscriber (handler takes body: dict, builds the Event with from_dict; "
        "logger=None), one awaited "
        f"broker.publish per event (kafka: publish_batch per {FS_KAFKA_BATCH}); redis StreamSub "
        f"group max_records={IN_FLIGHT}; nats JetStream PullSub(batch_size={IN_FLIGHT}); rabbit "
        f"quorum queue, prefetch {IN_FLIGHT}, persist=True",
        "raw floors: redis-py pipelined XADD + XREADGROUP COUNT 1000 + XACK per batch; nats-py "
        "publish_async acks gathered per 1,000 + pull fetch(1000) + ack; core nats publish + one "
        "flush + callback subscription; aiokafka send futures gathered per 1,000 + getmany + "
        "commit per batch; aio-pika confirms gathered per 1,000 + prefetch 256 + ack; psycopg "
        "COPY per 1,000 + SKIP LOCKED claim of 256 + DELETE per batch",
        "urls: " + "; ".join(f"{b.name} {redact_url(b.url)}" for b in backends if b.url),
        *machine_lines(
            ["tidings", "faststream", "redis", "nats-py", "aiokafka", "aio-pika", "psycopg"]
        ),
        f"load average (1, 5, 15 min): {load_start} at start, {_load()} at end (the machine "
        "is shared: compare within a row)",
        "",
    ]
    for backend in backends:
        lines.append(_line(backend, by_leg))
    lines.append("")
    for backend in backends:
        lat = latencies.get(backend.name)
        name = f"transports.{backend.name}.latency"
        if lat is None:
            lines.append(f"{name}: skipped ({backend.skipped or 'no tidings leg'})")
        elif isinstance(lat, str):
            lines.append(f"{name}: skipped ({lat})")
        else:
            lines.append(
                f"{name}: offered {fmt_rate(opts.rate)}/s paced (achieved "
                f"{fmt_rate(lat.achieved)}/s), {lat.count:,} single publishes: "
                f"p50 {fmt_duration(lat.p50)} · p99 {fmt_duration(lat.p99)} · "
                f"max {fmt_duration(lat.worst)}"
            )
    lines += ["", *goals(backends, by_leg, latencies)]
    errors = [e for c in by_leg.values() for e in c.errors]
    errors += [lat.error for lat in latencies.values() if isinstance(lat, Latency) and lat.error]
    lines.append("")
    if errors:
        lines.append(f"DELIVERY ERRORS ({len(errors)}): these figures are not valid")
        lines += [f"  {e}" for e in errors[:20]]
        if len(errors) > 20:
            lines.append(f"  ... and {len(errors) - 20} more")
    else:
        lines.append(
            "delivery check: every contender that ran handled every event exactly once, every round"
        )
    lines.append(f"total time {perf_counter() - t_start:.1f}s")
    print("\n".join(lines))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
