"""The Redis transport: options (URL and keyword arguments), lifecycle, health, subscribing.

Publishing and dead letters are mixed in from ``publish.py`` and ``dead_letters.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from tidings.topics import compile_pattern
from tidings.transport import (
    AsyncHandler,
    Capabilities,
    SubscribeOptions,
    TransportError,
    TransportHealth,
    TransportState,
    TransportStats,
    TransportSubscription,
    subscription_name,
)
from tidings.transports.common import Backoff, ConnectionReporter, ErrorCallback, Options
from tidings.transports.redis.dead_letters import RedisDeadLetters
from tidings.transports.redis.loops import _GONE, log
from tidings.transports.redis.publish import RedisPublishing
from tidings.transports.redis.pubsub import RedisPubSubSubscription
from tidings.transports.redis.streams import RedisStreamSubscription
from tidings.urls import redact_url

# Ours, plus `protocol`: replies are parsed in their RESP2 shapes, so RESP3 is not offered.
_TIDINGS_PARAMS = ("prefix", "mode", "maxlen", "protocol")

STREAMS_CAPABILITIES = Capabilities(
    ordering=True, persistent=True, consumer_groups=True, replay=True, redelivery=True
)
PUBSUB_CAPABILITIES = Capabilities(
    ordering=True, persistent=False, consumer_groups=False, replay=False, redelivery=False
)


_OPTIONS = Options("redis")


class RedisTransport(RedisPublishing, RedisDeadLetters):
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
