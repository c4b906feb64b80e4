"""Redis transport: Streams with consumer groups (durable), or pub/sub (fire-and-forget).

Streams mode (the default) keeps every event of a namespace in ONE stream, ``<prefix>:events``.
One stream gives a single total order, so events of one key arrive in publish order however
many types they span; per-type streams would need a merge on the consumer side to keep that.
Each subscription is a consumer group on that stream (members of a tidings group share it; a
broadcast subscription owns one alone), patterns are filtered exactly with ``tidings.topics``
on the entry's type (non-matching entries are acked at once, without decoding), and acks go
out in batches (XACK with many ids) after the shared ``Dispatcher`` settled each message.

An entry has ONE field: its name is the event type, its value the CloudEvents JSON body. The
type is readable without decoding the body, and one field instead of two (``type``, ``event``)
makes redis-py's reply parsing, the consumer's main cost, about 30% cheaper.

A message taken by a consumer that died stays in the group's pending list; every member runs
XAUTOCLAIM for entries idle longer than ``ack_wait`` and delivers them again. Messages this
process still holds (queued, running, retrying) are kept fresh with ``XCLAIM ... JUSTID`` so a
slow handler is not mistaken for a dead one. Dead letters go to ``<prefix>:dlq:<name>``.

URL: ``redis://[:password@]host:port/db?prefix=tidings&mode=streams&maxlen=100000``
(``rediss://`` for TLS). ``maxlen`` trims the stream approximately (XADD MAXLEN ~).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from tidings.event import Event, decode, encode
from tidings.topics import compile_pattern, memoized
from tidings.transport import (
    AsyncHandler,
    Capabilities,
    DeadMessage,
    Inbound,
    SubscribeOptions,
    TransportError,
    TransportHealth,
    TransportState,
    TransportStats,
    TransportSubscription,
    subscription_name,
)
from tidings.transports.common import (
    Backoff,
    ConnectionReporter,
    ErrorCallback,
    Options,
    dead_letter_name,
)
from tidings.transports.dispatch import Dispatcher
from tidings.urls import redact_url

__all__ = ["RedisPubSubSubscription", "RedisStreamSubscription", "RedisTransport"]

log = logging.getLogger("tidings.transports.redis")

_F_TYPE = b"type"  # dead-letter entries only; stream entries are {type: body}
_F_EVENT = b"event"
_NO_TYPE = b""  # field name of an entry whose type is unknown (an event type is never empty)
# Ours, plus `protocol`: replies are parsed in their RESP2 shapes, so RESP3 is not offered.
_TIDINGS_PARAMS = ("prefix", "mode", "maxlen", "protocol")
# Errors that mean "the server is (temporarily) not there": reconnect with backoff.
_GONE = (rexc.ConnectionError, rexc.TimeoutError, OSError)

STREAMS_CAPABILITIES = Capabilities(
    ordering=True, persistent=True, consumer_groups=True, replay=True, redelivery=True
)
PUBSUB_CAPABILITIES = Capabilities(
    ordering=True, persistent=False, consumer_groups=False, replay=False, redelivery=False
)


_OPTIONS = Options("redis")


class RedisTransport:
    """Events over Redis Streams (durable, groups, redelivery) or pub/sub (``?mode=pubsub``).

    Options (keyword arguments win over the URL's query): ``prefix`` namespaces every key;
    ``mode`` is ``"streams"`` or ``"pubsub"``; ``maxlen`` caps the stream (approximate trim,
    default: keep everything); ``batch_size`` entries per XREADGROUP; ``block_ms`` how long a
    read waits on the server; ``connect_timeout`` for start(); ``publish_timeout`` how long a
    publish keeps retrying while the server is away; ``max_connections`` caps the pool
    (callers past it wait for a free connection instead of failing); ``max_deliveries``
    dead-letters a message taken that many times without an ack (a handler that kills its
    process would otherwise loop forever; off by default); ``on_error`` is called with every
    error a background loop or handler meets (they are logged too).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        mode: Literal["streams", "pubsub"] | None = None,
        maxlen: int | None = None,
        batch_size: int = 256,
        block_ms: int = 2000,
        connect_timeout: float = 5.0,
        publish_timeout: float = 15.0,
        max_connections: int = 128,
        max_reconnect_delay: float = 2.0,
        max_deliveries: int | None = None,
        on_error: ErrorCallback | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("redis", "rediss"):
            raise TransportError(
                f"redis transport: expected a redis:// or rediss:// URL, got {redact_url(url)!r}"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.prefix = prefix if prefix is not None else query.get("prefix", "tidings")
        if not self.prefix or any(ch.isspace() for ch in self.prefix):
            raise TransportError(
                f"redis transport: prefix {self.prefix!r} must be non-empty without whitespace"
            )
        chosen_mode = _OPTIONS.choice(
            "mode",
            mode if mode is not None else query.get("mode", "streams"),
            ("streams", "pubsub"),
            "'streams' is durable with consumer groups, 'pubsub' fire-and-forget",
        )
        self.mode: Literal["streams", "pubsub"] = chosen_mode  # type: ignore[assignment]
        raw_maxlen: Any = maxlen if maxlen is not None else query.get("maxlen")
        self.maxlen: int | None = None
        if raw_maxlen not in (None, ""):
            self.maxlen = _OPTIONS.integer("maxlen", raw_maxlen)
        self.max_deliveries = (
            None if max_deliveries is None else _OPTIONS.integer("max_deliveries", max_deliveries)
        )
        _OPTIONS.integer("batch_size", batch_size)
        rest = [(k, v) for k, v in parse_qsl(parts.query) if k not in _TIDINGS_PARAMS]
        self._client_url = urlunsplit(parts._replace(query=urlencode(rest)))
        self.url = redact_url(url)
        self.server = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        self.capabilities = STREAMS_CAPABILITIES if self.mode == "streams" else PUBSUB_CAPABILITIES
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.max_connections = max_connections
        self.max_reconnect_delay = max_reconnect_delay
        self.on_error = on_error
        self.stream = f"{self.prefix}:events"
        # Typed Any: redis-py's overloads type every reply as a union of RESP2/RESP3 shapes.
        self._client: Any = None
        self._link = ConnectionReporter(
            log, "redis transport", self.server, on_error=on_error, error_level=logging.ERROR
        )
        self._subs: dict[int, RedisStreamSubscription | RedisPubSubSubscription] = {}
        self.stats = TransportStats()  # read by exporters
        self._consumer_base = f"{socket.gethostname()}-{os.getpid()}"

    # -- connection state ---------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            state = "closed" if self._link.closed else "not started"
            raise TransportError(
                f"redis transport {self.url} is {state}; call 'await transport.start()' first"
            )
        return self._client

    def _report(self, exc: BaseException, what: str) -> None:
        """Record a background failure: health, log and the on_error callback, never silent."""
        self._link.report(exc, what, lost=isinstance(exc, _GONE))

    def _backoff(self) -> Backoff:
        return Backoff(cap=self.max_reconnect_delay)

    async def start(self) -> None:
        if self._client is not None:
            return
        # A blocking pool: a burst of concurrent publishes waits for a connection rather than
        # failing with "Too many connections" (which would look like the server going away).
        pool = BlockingConnectionPool.from_url(
            self._client_url,
            max_connections=self.max_connections,
            timeout=self.publish_timeout,
            socket_connect_timeout=self.connect_timeout,
            socket_keepalive=True,
            protocol=2,
            # One quick retry covers a pooled connection the server closed; longer outages
            # are handled by our own loops, which also keep health() honest.
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
        )
        client: Redis = Redis.from_pool(pool)
        try:
            await asyncio.wait_for(client.ping(), self.connect_timeout + 1.0)
        except (rexc.RedisError, OSError, TimeoutError) as exc:
            await client.aclose()
            self._link.state = TransportState.DISCONNECTED
            self._link.last_error = f"{type(exc).__name__}: {exc}"
            raise TransportError(
                f"cannot reach Redis at {self.server} ({type(exc).__name__}: {exc}); "
                "is the server running and the URL right?"
            ) from None
        self._client = client
        self._link.state = TransportState.CONNECTED

    async def ping(self) -> float:
        started = time.perf_counter()
        try:
            await self.client.ping()
        except (rexc.RedisError, OSError) as exc:
            self._report(exc, "ping")
            raise TransportError(f"Redis at {self.server} did not answer ping: {exc}") from None
        self._link.connected()
        return time.perf_counter() - started

    def subscriptions(self) -> list[TransportSubscription]:
        return list(self._subs.values())

    def health(self) -> TransportHealth:
        lags = [s.lag for s in self._subs.values()]
        lag = None if not lags or any(v is None for v in lags) else sum(v for v in lags if v)
        return TransportHealth(
            state=self._link.state,
            last_error=self._link.last_error,
            lag=lag,
            detail={
                "server": self.server,
                "mode": self.mode,
                "stream": self.stream if self.mode == "streams" else None,
                "subscriptions": {
                    s.name: {"pattern": s.pattern, "group": s.group, "lag": s.lag}
                    for s in self._subs.values()
                },
            },
        )

    async def close(self, timeout: float = 5.0) -> None:
        if self._link.closed:
            return
        subs = list(self._subs.values())
        if subs:
            await asyncio.gather(*(s.close(timeout) for s in subs), return_exceptions=True)
        self._link.state = TransportState.CLOSED
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    # -- publishing ----------------------------------------------------------------------------

    def channel(self, event_type: str) -> str:
        return f"{self.prefix}:ev:{event_type}"

    async def _retrying(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``op`` until it succeeds or ``publish_timeout`` passes with the server away.

        A retry after a dropped connection may repeat a write the server already took: a
        duplicate, which at-least-once allows, never a loss.
        """
        deadline = time.monotonic() + self.publish_timeout
        backoff = self._backoff()
        while True:
            try:
                result = await op()
            except _GONE as exc:
                self._report(exc, what)
                if time.monotonic() + backoff.next > deadline:
                    raise TransportError(
                        f"{what}: Redis at {self.server} unreachable for "
                        f"{self.publish_timeout:g}s ({exc})"
                    ) from None
                await backoff.sleep()
                continue
            except rexc.RedisError as exc:
                self._report(exc, what)
                raise TransportError(f"{what}: Redis at {self.server} refused: {exc}") from None
            self._link.connected()
            return result

    async def publish(self, event: Event) -> None:
        body = encode(event)
        client = self.client
        if self.mode == "pubsub":
            channel = self.channel(event.type)
            await self._retrying("publish", lambda: client.publish(channel, body))
        else:
            fields: dict[Any, Any] = {event.type: body}
            await self._retrying(
                "publish", lambda: client.xadd(self.stream, fields, maxlen=self.maxlen)
            )
        self.stats.published += 1

    async def publish_many(self, events: Sequence[Event]) -> None:
        items = [(e.type, encode(e)) for e in events]
        await self._publish_raw(items)
        self.stats.published += len(items)

    async def _publish_raw(self, items: Sequence[tuple[str | None, bytes]]) -> None:
        """Pipeline (type, body) pairs, 1,000 per round trip, in order."""
        client = self.client
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]

            async def run(chunk: Sequence[tuple[str | None, bytes]] = chunk) -> Any:
                pipe = client.pipeline(transaction=False)
                for type_name, body in chunk:
                    self._queue_publish(pipe, type_name, body)
                return await pipe.execute()

            await self._retrying("publish_many", run)

    def _queue_publish(self, pipe: Any, type_name: str | None, body: bytes) -> None:
        if self.mode == "pubsub":
            pipe.publish(self.channel(type_name or "unknown"), body)
            return
        fields: dict[Any, Any] = {type_name or _NO_TYPE: body}
        pipe.xadd(self.stream, fields, maxlen=self.maxlen)

    # -- subscribing ---------------------------------------------------------------------------

    async def subscribe(
        self,
        pattern: str,
        handler: AsyncHandler,
        options: SubscribeOptions | None = None,
    ) -> RedisStreamSubscription | RedisPubSubSubscription:
        compiled = compile_pattern(pattern)  # PatternError before any I/O
        opts = options or SubscribeOptions()
        self.client  # noqa: B018 -- raises TransportError when not started
        name = subscription_name(pattern, opts.group)
        sub: RedisStreamSubscription | RedisPubSubSubscription
        if self.mode == "pubsub":
            if opts.group is not None:
                raise TransportError(
                    f"redis pub/sub mode has no consumer groups (group {opts.group!r}); every "
                    "subscriber gets every event. Use mode=streams for groups."
                )
            sub = RedisPubSubSubscription(self, name, pattern, compiled.matches, handler, opts)
        else:
            sub = RedisStreamSubscription(self, name, pattern, compiled.matches, handler, opts)
        await sub.open()
        self._subs[id(sub)] = sub
        return sub

    def _forget(self, sub: RedisStreamSubscription | RedisPubSubSubscription) -> None:
        self._subs.pop(id(sub), None)

    # -- dead letters --------------------------------------------------------------------------

    def dlq_key(self, subscription: str) -> str:
        return dead_letter_name(self.prefix, subscription, sep=":")

    async def _write_dead_letter(self, dead: DeadMessage) -> None:
        fields: dict[Any, Any] = {
            _F_EVENT: dead.raw,
            b"error": dead.error,
            b"attempts": dead.attempts,
            b"failed_at": repr(dead.failed_at),
        }
        if dead.event_id is not None:
            fields[b"event_id"] = dead.event_id
        if dead.event_type is not None:
            fields[_F_TYPE] = dead.event_type
        await self.client.xadd(self.dlq_key(dead.subscription), fields)

    @staticmethod
    def _dead_from(subscription: str, fields: dict[bytes, bytes]) -> DeadMessage:
        def text(key: bytes) -> str | None:
            value = fields.get(key)
            return value.decode() if value is not None else None

        return DeadMessage(
            subscription=subscription,
            raw=fields.get(_F_EVENT, b""),
            error=text(b"error") or "",
            attempts=int(fields.get(b"attempts", b"0")),
            failed_at=float(fields.get(b"failed_at", b"0")),
            event_id=text(b"event_id"),
            event_type=text(_F_TYPE),
        )

    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadMessage]:
        try:
            rows = await self.client.xrange(self.dlq_key(subscription), count=limit)
        except rexc.RedisError as exc:
            self._report(exc, "dead_letters")
            raise TransportError(f"dead_letters: Redis at {self.server}: {exc}") from None
        return [self._dead_from(subscription, fields) for _id, fields in rows]

    async def replay_dead_letters(self, subscription: str) -> int:
        """Publish the dead messages again (every matching subscription sees them), then drop them.

        Publish and delete go in one MULTI per chunk, so a crash cannot lose a dead message;
        at worst it is published and still listed.
        """
        key = self.dlq_key(subscription)
        client = self.client
        total = 0
        while True:
            rows = await client.xrange(key, count=500)
            if not rows:
                return total
            pipe = client.pipeline(transaction=self.mode == "streams")
            for _id, fields in rows:
                type_bytes = fields.get(_F_TYPE)
                self._queue_publish(
                    pipe, type_bytes.decode() if type_bytes else None, fields.get(_F_EVENT, b"")
                )
            pipe.xdel(key, *[row_id for row_id, _f in rows])
            await pipe.execute()
            total += len(rows)


def _entry(fields: dict[bytes, bytes]) -> tuple[str | None, bytes]:
    """(type or None, body) of a stream entry: ``{type: body}``, or a foreign producer's
    ``{type: ..., event: ...}`` layout."""
    if len(fields) == 1:
        name, body = next(iter(fields.items()))
        return (name.decode() if name else None), body
    type_bytes = fields.get(_F_TYPE)
    return (type_bytes.decode() if type_bytes else None), fields.get(_F_EVENT, b"")


class RedisStreamSubscription:
    """One consumer-group member: read loop, claim loop, heartbeat/lag loop and ack batcher."""

    def __init__(
        self,
        transport: RedisTransport,
        name: str,
        pattern: str,
        matches: Callable[[str], bool],
        handler: AsyncHandler,
        options: SubscribeOptions,
    ) -> None:
        self.transport = transport
        self.name = name
        self.pattern = pattern
        self.group = options.group
        self.options = options
        self.consumer = f"{transport._consumer_base}-{uuid.uuid4().hex[:8]}"
        self.lag: int | None = None
        self._wanted = memoized(matches)
        self._dispatcher = Dispatcher(
            name, handler, options, transport._write_dead_letter, on_error=transport.on_error
        )
        # Entries read by this member and not yet XACKed: skipped if claimed again, and kept
        # fresh by the heartbeat so no other member takes them while we still work on them.
        self._held: set[bytes] = set()
        self._acks: list[bytes] = []
        self._ack_wake = asyncio.Event()
        self._ack_wait_ms = max(1, int(options.ack_wait * 1000))
        self._last_id: bytes = b"0-0"
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def stats(self) -> Any:
        return self._dispatcher.stats

    @property
    def client(self) -> Any:
        return self.transport.client

    async def _ensure_group(self, start: str | bytes) -> None:
        try:
            await self.client.xgroup_create(self.transport.stream, self.name, start, mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def open(self) -> None:
        start = "$" if self.options.start == "new" else "0"
        try:
            await self._ensure_group(start)
            for info in await self.client.xinfo_groups(self.transport.stream):
                if info.get("name") in (self.name, self.name.encode()):
                    self._last_id = info.get("last-delivered-id") or b"0-0"
        except rexc.RedisError as exc:
            self.transport._report(exc, f"subscribe {self.pattern!r}")
            raise TransportError(
                f"subscribe {self.pattern!r}: cannot create consumer group {self.name!r} on "
                f"Redis at {self.transport.server}: {exc}"
            ) from None
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(coro, name=f"tidings-redis-{what}-{self.name}")
            for what, coro in (
                ("read", self._read_loop()),
                ("claim", self._claim_loop()),
                ("heartbeat", self._heartbeat_loop()),
                ("ack", self._ack_loop()),
            )
        ]

    # -- delivery ------------------------------------------------------------------------------

    async def _deliver(
        self, entries: Iterable[tuple[bytes, dict[bytes, bytes]]], counts: dict[bytes, int]
    ) -> None:
        for entry_id, fields in entries:
            if entry_id is None or entry_id in self._held:
                continue  # already ours and in progress (a claim of our own entry)
            if not fields:  # trimmed away (MAXLEN) while pending: nothing left to deliver
                self._ack_now(entry_id)
                continue
            type_name, body = _entry(fields)
            if type_name is not None and not self._wanted(type_name):
                self._ack_now(entry_id)
                continue
            count = counts.get(entry_id, 1)
            limit = self.transport.max_deliveries
            if limit is not None and count > limit:
                await self._write_unacked_dead_letter(entry_id, body, type_name, count)
                continue
            event: Event | None
            error: str | None = None
            try:
                event = decode(body)
            except Exception as exc:
                event, error = None, f"{type(exc).__name__}: {exc}"
            if type_name is None and event is not None and not self._wanted(event.type):
                self._ack_now(entry_id)
                continue
            self._held.add(entry_id)
            await self._dispatcher.submit(
                Inbound(
                    raw=body,
                    event=event,
                    ack=partial(self._ack, entry_id),
                    nack=partial(self._nack, entry_id),
                    delivery_count=count,
                    decode_error=error,
                )
            )

    async def _write_unacked_dead_letter(
        self, entry_id: bytes, body: bytes, type_name: str | None, count: int
    ) -> None:
        """Dead-letter a message taken ``count`` times without an ack, without running it."""
        event_id: str | None = None
        with contextlib.suppress(Exception):
            event_id = decode(body).id
        error = (
            f"delivered {count} times without an ack (max_deliveries="
            f"{self.transport.max_deliveries}): its consumers died or were killed while handling it"
        )
        log.error("subscription %s: entry %s dead-lettered: %s", self.name, entry_id, error)
        dead = DeadMessage(
            subscription=self.name,
            raw=body,
            error=error,
            attempts=count,
            failed_at=time.time(),
            event_id=event_id,
            event_type=type_name,
        )
        try:
            await self.transport._write_dead_letter(dead)
        except Exception as exc:  # left pending: claimed again later
            self.transport._report(exc, f"subscription {self.name}: dead letter")
            return
        self._ack_now(entry_id)

    def _ack_now(self, entry_id: bytes) -> None:
        self._held.add(entry_id)
        self._acks.append(entry_id)
        self._ack_wake.set()

    async def _ack(self, entry_id: bytes) -> None:
        # Batched: the ack loop sends every id queued meanwhile in one XACK.
        self._acks.append(entry_id)
        self._ack_wake.set()

    async def _nack(self, entry_id: bytes) -> None:
        # Left pending: once idle for ack_wait, a claim loop (ours or a peer's) redelivers it.
        self._held.discard(entry_id)

    # -- loops ---------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        transport = self.transport
        stream = transport.stream
        backoff = transport._backoff()
        recover = False
        while not self._closed:
            try:
                if recover:
                    await self._recover()
                    recover = False
                resp = await self.client.xreadgroup(
                    self.name,
                    self.consumer,
                    {stream: ">"},
                    count=transport.batch_size,
                    block=transport.block_ms,
                )
                transport._link.connected()
                backoff.reset()
            except rexc.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._recreate_group(exc)
                    continue
                transport._report(exc, f"subscription {self.name}: read")
                await backoff.sleep()
                continue
            except _GONE as exc:
                transport._report(exc, f"subscription {self.name}: read")
                recover = True
                await backoff.sleep()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                transport._report(exc, f"subscription {self.name}: read")
                await backoff.sleep()
                continue
            for _stream, entries in resp or ():
                if entries:
                    self._last_id = entries[-1][0]
                await self._deliver(entries, {})

    async def _recreate_group(self, exc: BaseException) -> None:
        """The server lost the group (restart without persistence, or deleted): make it again
        at the last entry we saw, so nothing published since is skipped."""
        log.warning(
            "subscription %s: consumer group missing on %s (%s); recreating at %s",
            self.name,
            self.transport.server,
            exc,
            self._last_id.decode() if isinstance(self._last_id, bytes) else self._last_id,
        )
        try:
            await self._ensure_group(self._last_id)
        except rexc.RedisError as err:
            self.transport._report(err, f"subscription {self.name}: recreate group")
            await asyncio.sleep(0.1)

    async def _recover(self) -> None:
        """After a lost connection: settle queued acks, then re-read our own pending entries.

        A read whose reply was lost with the connection left entries pending under our name
        that we never saw; reading history (id 0) returns them now instead of after ack_wait.
        """
        await self._flush_acks()
        cursor: bytes | str = "0"
        while not self._closed:
            resp = await self.client.xreadgroup(
                self.name,
                self.consumer,
                {self.transport.stream: cursor},
                count=self.transport.batch_size,
            )
            entries = resp[0][1] if resp else []
            if not entries:
                return
            cursor = entries[-1][0]
            fresh = [(i, f) for i, f in entries if i not in self._held]
            await self._deliver(fresh, dict.fromkeys((i for i, _ in fresh), 2))

    async def _claim_loop(self) -> None:
        transport = self.transport
        tick = min(max(self.options.ack_wait / 4, 0.05), 1.0)
        count = max(1, min(transport.batch_size, self.options.max_in_flight * 2))
        while not self._closed:
            await asyncio.sleep(tick)
            try:
                cursor: bytes | str = "0-0"
                while True:
                    resp = await self.client.xautoclaim(
                        transport.stream,
                        self.name,
                        self.consumer,
                        self._ack_wait_ms,
                        start_id=cursor,
                        count=count,
                    )
                    cursor, entries = resp[0], resp[1]
                    fresh = [(i, f) for i, f in entries if i is not None and i not in self._held]
                    if fresh:
                        counts = await self._delivery_counts([i for i, _ in fresh])
                        log.info(
                            "subscription %s: claimed %d message(s) idle > %.1fs from dead "
                            "or slow consumers",
                            self.name,
                            len(fresh),
                            self.options.ack_wait,
                        )
                        await self._deliver(fresh, counts)
                    if cursor in (b"0-0", "0-0"):
                        break
                transport._link.connected()
            except rexc.ResponseError as exc:
                if "NOGROUP" not in str(exc):  # the read loop recreates a lost group
                    transport._report(exc, f"subscription {self.name}: claim")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                transport._report(exc, f"subscription {self.name}: claim")

    async def _delivery_counts(self, ids: list[bytes]) -> dict[bytes, int]:
        try:
            rows = await self.client.xpending_range(
                self.transport.stream,
                self.name,
                min=min(ids),
                max=max(ids),
                count=len(ids) + len(self._held) + 16,
                consumername=self.consumer,
            )
        except rexc.RedisError:
            return dict.fromkeys(ids, 2)
        wanted = set(ids)
        return {
            r["message_id"]: int(r["times_delivered"]) for r in rows if r["message_id"] in wanted
        }

    async def _heartbeat_loop(self) -> None:
        transport = self.transport
        interval = max(self.options.ack_wait / 3, 0.02)
        last_beat = last_lag = 0.0
        while not self._closed:
            await asyncio.sleep(min(interval, 0.5))
            try:
                held = list(self._held)
                if held and time.monotonic() - last_beat >= interval * 0.9:
                    last_beat = time.monotonic()
                    for start in range(0, len(held), 500):
                        await self.client.xclaim(
                            transport.stream,
                            self.name,
                            self.consumer,
                            0,
                            held[start : start + 500],
                            justid=True,
                        )
                if time.monotonic() - last_lag >= 1.0:
                    last_lag = time.monotonic()
                    await self._update_lag()
                    transport._link.connected()
            except asyncio.CancelledError:
                raise
            except rexc.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    transport._report(exc, f"subscription {self.name}: heartbeat")
            except Exception as exc:
                transport._report(exc, f"subscription {self.name}: heartbeat")

    async def _update_lag(self) -> None:
        for info in await self.client.xinfo_groups(self.transport.stream):
            if info.get("name") in (self.name, self.name.encode()):
                lag = info.get("lag")
                pending = int(info.get("pending") or 0)
                self.lag = None if lag is None else int(lag) + pending

    async def _ack_loop(self) -> None:
        backoff = self.transport._backoff()
        while not self._closed:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            try:
                await self._flush_acks()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.transport._report(exc, f"subscription {self.name}: ack")
                self._ack_wake.set()  # retry the kept ids after a pause
                await backoff.sleep()

    async def _flush_acks(self) -> None:
        while self._acks:
            ids, self._acks = self._acks, []
            try:
                await self.client.xack(self.transport.stream, self.name, *ids)
            except BaseException:
                self._acks[:0] = ids  # kept: sent again once the server is back
                raise
            self.transport._link.connected()
            self._held.difference_update(ids)

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self, timeout: float = 5.0) -> None:
        """Stop reading, finish (or abandon unacked) in-flight work, flush acks, leave the group.

        Messages not finished within ``timeout`` are NOT acked: they stay pending and another
        member claims them after ack_wait.
        """
        if self._closed:
            return
        self._closed = True
        await _stop(self._tasks[:1])
        left = await self._dispatcher.close(timeout)
        if left:
            log.warning(
                "subscription %s: %d message(s) unfinished at close; left pending for "
                "redelivery to another member",
                self.name,
                left,
            )
        self._ack_wake.set()  # lets the ack loop see _closed even if a cancel was swallowed
        await _stop(self._tasks[1:])
        try:
            await asyncio.wait_for(self._flush_acks(), max(timeout, 1.0))
            await self._leave()
        except Exception as exc:
            self.transport._report(exc, f"subscription {self.name}: close")
        self.transport._forget(self)

    async def _leave(self) -> None:
        client = self.client
        stream = self.transport.stream
        if self.group is None:
            # A broadcast group is private to this subscription and its name is random:
            # nobody can resume it, so drop it rather than let dead groups pile up.
            await client.xgroup_destroy(stream, self.name)
            return
        mine = await client.xpending_range(
            stream, self.name, min="-", max="+", count=1, consumername=self.consumer
        )
        if not mine:  # deleting a consumer drops its pending entries: only when it has none
            await client.xgroup_delconsumer(stream, self.name, self.consumer)


class RedisPubSubSubscription:
    """A pub/sub listener: exact patterns SUBSCRIBE one channel, wildcards PSUBSCRIBE a prefix
    glob; either way the type is filtered exactly. No acks: what arrives while away is gone."""

    def __init__(
        self,
        transport: RedisTransport,
        name: str,
        pattern: str,
        matches: Callable[[str], bool],
        handler: AsyncHandler,
        options: SubscribeOptions,
    ) -> None:
        self.transport = transport
        self.name = name
        self.pattern = pattern
        self.group: str | None = None
        self.lag: int | None = 0
        self._wanted = memoized(matches)
        self._dispatcher = Dispatcher(
            name, handler, options, transport._write_dead_letter, on_error=transport.on_error
        )
        compiled = compile_pattern(pattern)
        self._channel_prefix = transport.channel("")
        if compiled.is_exact:
            self._exact: str | None = transport.channel(pattern)
            self._glob = ""
        else:
            self._exact = None
            literal: list[str] = []
            for seg in compiled.segments:
                if seg in ("*", "**"):
                    break
                literal.append(seg)
            self._glob = _glob_escape(transport.channel(".".join(literal))) + "*"
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def stats(self) -> Any:
        return self._dispatcher.stats

    async def _connect(self) -> Any:
        pubsub: Any = self.transport.client.pubsub()
        if self._exact is not None:
            await pubsub.subscribe(self._exact)
        else:
            await pubsub.psubscribe(self._glob)
        # Wait for the confirmation so a publish made after subscribe() returns is seen.
        deadline = time.monotonic() + self.transport.connect_timeout
        while time.monotonic() < deadline:
            msg = await pubsub.get_message(timeout=0.5)
            if msg is not None and msg["type"] in ("subscribe", "psubscribe"):
                return pubsub
        await pubsub.aclose()
        raise rexc.TimeoutError("no subscribe confirmation from the server")

    async def open(self) -> None:
        try:
            self._pubsub = await self._connect()
        except (rexc.RedisError, OSError) as exc:
            self.transport._report(exc, f"subscribe {self.pattern!r}")
            raise TransportError(
                f"subscribe {self.pattern!r}: Redis at {self.transport.server}: {exc}"
            ) from None
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        transport = self.transport
        backoff = transport._backoff()
        cut = len(self._channel_prefix)
        while not self._closed:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._connect()
                    transport._link.connected()
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                transport._report(exc, f"subscription {self.name}: pub/sub")
                if self._pubsub is not None:
                    with contextlib.suppress(Exception):
                        await self._pubsub.aclose()
                    self._pubsub = None
                await backoff.sleep()
                continue
            if msg is None or msg.get("type") not in ("message", "pmessage"):
                continue
            channel = msg["channel"]
            type_name = (channel.decode() if isinstance(channel, bytes) else channel)[cut:]
            if not self._wanted(type_name):
                continue
            body: bytes = msg["data"]
            event: Event | None
            error: str | None = None
            try:
                event = decode(body)
            except Exception as exc:
                event, error = None, f"{type(exc).__name__}: {exc}"
            await self._dispatcher.submit(
                Inbound(raw=body, event=event, ack=_noop, nack=_noop, decode_error=error)
            )

    async def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            await _stop([self._task])
        await self._dispatcher.close(timeout)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        self.transport._forget(self)


async def _stop(tasks: Sequence[asyncio.Task[None]], grace: float = 2.0) -> None:
    """Cancel background loops and wait for them, but never forever.

    redis-py can swallow a cancellation that races with its own timeouts; the loops also check
    a closed flag, and this bound keeps close() from hanging if one still misses both.
    """
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        log.warning("redis transport: background task %s did not stop within %.1fs", task, grace)


async def _noop() -> None:
    return None


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
