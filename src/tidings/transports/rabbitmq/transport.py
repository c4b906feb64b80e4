"""The RabbitMQ transport: options (URL and keyword arguments), lifecycle, health, subscribing.

Publishing and dead letters are mixed in from ``publish.py`` and ``dead_letters.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import AbstractChannel

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
from tidings.transports.common import ConnectionReporter, Options, dead_letter_name
from tidings.transports.rabbitmq.consumer import RabbitMQSubscription
from tidings.transports.rabbitmq.dead_letters import RabbitMQDeadLetters
from tidings.transports.rabbitmq.publish import RabbitMQPublishing
from tidings.urls import redact_url

log = logging.getLogger("tidings.transports.rabbitmq")

_OPT = Options("RabbitMQ")

# Query parameters tidings reads; everything else in the query goes to aio-pika (heartbeat, ...).
_OWN_PARAMS = (
    "exchange",
    "prefix",
    "queue_type",
    "connect_timeout",
    "publish_timeout",
    "reconnect_interval",
    "broadcast_dlq_ttl",
    "publish_batch",
    "lag_interval",
    "max_deliveries",
)


class RabbitMQTransport(RabbitMQPublishing, RabbitMQDeadLetters):
    """The ``amqp://`` / ``amqps://`` backend.

    URL: ``amqp://user:pass@host:5672/vhost?exchange=tidings&prefix=tidings&queue_type=quorum``.
    Keyword options override the query: ``exchange``, ``prefix`` (queue names),
    ``queue_type`` (``quorum`` or ``classic`` for group queues), ``connect_timeout``,
    ``publish_timeout`` (how long a publish waits for a lost connection to come back),
    ``reconnect_interval``, ``broadcast_dlq_ttl`` (seconds an unused broadcast DLQ is kept),
    ``publish_batch``, ``lag_interval``, ``max_deliveries`` (dead-letter a message delivered
    this many times without an ack: a handler that kills its process; quorum queues count) and
    ``on_error`` (called with every error the transport logs: handler failures, connection
    loss, publish retries).
    """

    capabilities = Capabilities(
        ordering=True,
        persistent=True,
        consumer_groups=True,
        replay=False,
        redelivery=True,
    )

    def __init__(
        self,
        url: str,
        *,
        exchange: str | None = None,
        prefix: str | None = None,
        queue_type: Literal["quorum", "classic"] | None = None,
        connect_timeout: float | None = None,
        publish_timeout: float | None = None,
        reconnect_interval: float | None = None,
        broadcast_dlq_ttl: float | None = None,
        publish_batch: int | None = None,
        lag_interval: float | None = None,
        max_deliveries: int | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise TransportError(
                f"RabbitMQ URL {redact_url(url)!r}: expected scheme amqp:// or amqps://"
            )
        if not parts.hostname:
            raise TransportError(
                f"RabbitMQ URL {redact_url(url)!r} names no host; "
                "expected amqp://user:pass@host:5672/vhost"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        own = {k: query.pop(k) for k in _OWN_PARAMS if k in query}

        def pick(name: str, given: Any, default: Any) -> Any:
            return given if given is not None else own.get(name, default)

        self.url = redact_url(url)  # public and printable; the password stays in _amqp_url
        self._safe_url = self.url
        self._host = parts.hostname
        self._port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        self._where = f"{self._host}:{self._port}"
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self._vhost = vhost
        self._exchange = str(pick("exchange", exchange, "tidings"))
        self._prefix = str(pick("prefix", prefix, "tidings"))
        if not self._exchange or not self._prefix:
            raise TransportError("RabbitMQ options exchange and prefix must not be empty")
        self._queue_type = _OPT.choice(
            "queue_type", str(pick("queue_type", queue_type, "quorum")), ("quorum", "classic")
        )
        self._connect_timeout = _OPT.duration(
            "connect_timeout", pick("connect_timeout", connect_timeout, 5.0)
        )
        self._publish_timeout = _OPT.duration(
            "publish_timeout", pick("publish_timeout", publish_timeout, 30.0)
        )
        self._reconnect_interval = _OPT.duration(
            "reconnect_interval", pick("reconnect_interval", reconnect_interval, 1.0)
        )
        self._dlq_ttl = _OPT.duration(
            "broadcast_dlq_ttl", pick("broadcast_dlq_ttl", broadcast_dlq_ttl, 7 * 86400.0)
        )
        self._lag_interval = _OPT.duration("lag_interval", pick("lag_interval", lag_interval, 1.0))
        self._publish_batch = _OPT.integer(
            "publish_batch", pick("publish_batch", publish_batch, 1000)
        )
        limit = pick("max_deliveries", max_deliveries, None)
        self._max_deliveries = None if limit is None else _OPT.integer("max_deliveries", limit)
        self._amqp_url = urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment)
        )

        self._conn: AbstractRobustConnection | None = None
        self._pub: AbstractChannel | None = None
        self._pub_lock = asyncio.Lock()
        self._subs: dict[int, RabbitMQSubscription] = {}
        self.stats = TransportStats()  # read by exporters
        self._link = ConnectionReporter(
            log, "RabbitMQ", self._where, on_error=on_error, state=TransportState.DISCONNECTED
        )
        self._closed = False
        self._lag: int | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._reconnects = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._conn is not None:
            return
        if self._closed:
            raise TransportError(f"RabbitMQ transport for {self._safe_url} is closed")
        self._link.state = TransportState.CONNECTING
        try:
            conn = await asyncio.wait_for(
                aio_pika.connect_robust(
                    self._amqp_url,
                    timeout=self._connect_timeout,
                    reconnect_interval=self._reconnect_interval,
                    client_properties={"connection_name": f"tidings {self._prefix}"},
                ),
                self._connect_timeout + 1.0,
            )
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            self._link.state = TransportState.DISCONNECTED
            raise TransportError(
                f"RabbitMQ at {self._where} refused the login or vhost {self._vhost!r} "
                f"({self._safe_url}): {exc}; check the user, password and vhost permissions"
            ) from exc
        except aiormq.exceptions.InvalidFrameError as exc:
            # The broker answered Connection.Open with Connection.Close: the vhost.
            self._link.state = TransportState.DISCONNECTED
            raise TransportError(
                f"RabbitMQ at {self._where} refused to open vhost {self._vhost!r} "
                f"({self._safe_url}): it does not exist or the user has no access to it; "
                f"create it (rabbitmqctl add_vhost) or fix the URL path"
            ) from exc
        except (TimeoutError, OSError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
            self._link.state = TransportState.DISCONNECTED
            detail = str(exc) or type(exc).__name__
            raise TransportError(
                f"RabbitMQ is not reachable at {self._where} ({self._safe_url}): {detail}; "
                "check the URL and that the server is running"
            ) from exc
        conn.close_callbacks.add(self._on_connection_lost)
        conn.reconnect_callbacks.add(self._on_reconnected)
        self._conn = conn
        try:
            await self._publisher()  # declares the exchange, proves the vhost is usable
        except BaseException:
            self._conn = None
            await conn.close()
            self._link.state = TransportState.DISCONNECTED
            raise
        self._link.state = TransportState.CONNECTED
        self._lag_task = asyncio.create_task(self._watch_lag(), name="tidings-rabbitmq-lag")

    def _on_connection_lost(self, _sender: Any, exc: BaseException | None = None) -> None:
        if self._closed or exc is None:
            return
        self._link.lost(f"connection to {self._where} lost: {exc}")
        self._link.notify(exc)

    def _on_reconnected(self, _sender: Any) -> None:
        self._reconnects += 1
        self._link.connected()

    async def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        subs = list(self._subs.values())
        if subs:
            await asyncio.gather(*(s.close(timeout) for s in subs), return_exceptions=True)
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.gather(self._lag_task, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), max(timeout, 0.5))
        self._pub = None
        self._link.state = TransportState.CLOSED

    def _connection(self) -> AbstractRobustConnection:
        if self._conn is None:
            state = "closed" if self._closed else "not started; await transport.start() first"
            raise TransportError(f"RabbitMQ transport for {self._safe_url} is {state}")
        return self._conn

    async def _raw_connection(self, timeout: float) -> aiormq.abc.AbstractConnection:
        """The live AMQP connection under the robust one, waiting up to ``timeout`` for it."""
        conn = self._connection()
        try:
            await asyncio.wait_for(conn.ready(), timeout)
        except TimeoutError:
            raise TransportError(
                f"RabbitMQ at {self._where} has been unreachable for {timeout:.0f}s"
                + (f" ({self._link.last_error})" if self._link.last_error else "")
            ) from None
        transport = conn.transport
        if transport is None:
            raise aiormq.exceptions.ChannelInvalidStateError("connection is reconnecting")
        return transport.connection

    async def _publisher(self) -> AbstractChannel:
        """A confirming channel for publishes and dead letters, reopened after a loss."""
        channel = self._pub
        if channel is not None and not channel.is_closed:
            return channel
        async with self._pub_lock:
            channel = self._pub
            if channel is not None and not channel.is_closed:
                return channel
            raw = await self._raw_connection(self._publish_timeout)
            channel = await raw.channel(publisher_confirms=True)
            await self._declare_exchange(channel)
            self._pub = channel
            return channel

    async def _declare_exchange(self, channel: AbstractChannel) -> None:
        try:
            await channel.exchange_declare(self._exchange, exchange_type="topic", durable=True)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise TransportError(
                f"RabbitMQ exchange {self._exchange!r} on {self._where} exists with other "
                f"settings (tidings needs a durable topic exchange): {exc}; "
                "pick another ?exchange= or delete it"
            ) from exc
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise TransportError(
                f"RabbitMQ at {self._where} refused to declare exchange {self._exchange!r} "
                f"in vhost {self._vhost!r}: {exc}; grant the user configure permission"
            ) from exc

    @contextlib.asynccontextmanager
    async def _channel(self) -> AsyncIterator[AbstractChannel]:
        """A short-lived channel for admin work; a broker error closes only this one."""
        raw = await self._raw_connection(self._publish_timeout)
        channel = await raw.channel(publisher_confirms=False)
        try:
            yield channel
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()

    # ------------------------------------------------------------------ subscribing

    def _queue_name(self, name: str) -> str:
        return f"{self._prefix}.{name}"

    def _dlq_name(self, name: str) -> str:
        return dead_letter_name(self._prefix, name)

    async def subscribe(
        self,
        pattern: str,
        handler: AsyncHandler,
        options: SubscribeOptions | None = None,
    ) -> RabbitMQSubscription:
        compiled = compile_pattern(pattern)  # raises PatternError before touching the broker
        opts = options or SubscribeOptions()
        conn = self._connection()
        name = subscription_name(pattern, opts.group)
        sub = RabbitMQSubscription(self, name, compiled, opts, handler)
        await sub.open(conn)
        self._subs[id(sub)] = sub
        return sub

    def _forget(self, sub: RabbitMQSubscription) -> None:
        self._subs.pop(id(sub), None)

    async def _queue_arguments(
        self, queue: str, arguments: dict[str, Any]
    ) -> dict[str, Any] | None:
        """``arguments`` if a queue with them exists or can be made; None to use it as it is.

        A queue declared earlier with other arguments (say classic where quorum is asked for)
        is used as it stands rather than failing the subscription; the log says so.
        """
        async with self._channel() as channel:
            try:
                await channel.queue_declare(queue, durable=True, arguments=arguments)
                return arguments
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                log.warning(
                    "RabbitMQ queue %r exists with other arguments (%s); using it as it is",
                    queue,
                    exc,
                )
                return None

    # ------------------------------------------------------------------ health

    async def ping(self) -> float:
        started = time.monotonic()
        try:
            channel = await asyncio.wait_for(self._publisher(), self._connect_timeout)
            await asyncio.wait_for(
                channel.exchange_declare(
                    self._exchange, exchange_type="topic", durable=True, passive=True
                ),
                self._connect_timeout,
            )
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(
                f"RabbitMQ at {self._where} did not answer a ping: {type(exc).__name__}: {exc}"
            ) from exc
        return time.monotonic() - started

    def subscriptions(self) -> list[TransportSubscription]:
        return list(self._subs.values())

    def health(self) -> TransportHealth:
        conn = self._conn
        if self._closed:
            state = TransportState.CLOSED
        elif conn is None:
            state = self._link.state
        elif conn.connected.is_set() and not conn.is_closed:
            state = TransportState.CONNECTED
        else:
            state = TransportState.DISCONNECTED
        return TransportHealth(
            state=state,
            last_error=self._link.last_error,
            lag=self._lag,
            detail={
                "server": self._where,
                "vhost": self._vhost,
                "exchange": self._exchange,
                "queue_type": self._queue_type,
                "subscriptions": len(self._subs),
                "reconnects": self._reconnects,
            },
        )

    async def _watch_lag(self) -> None:
        """Keep ``health().lag`` fresh: messages ready in this process's subscription queues."""
        while True:
            await asyncio.sleep(self._lag_interval)
            if not self._subs:
                self._lag = None
                continue
            if self._conn is None or not self._conn.connected.is_set():
                continue
            try:
                total = 0
                async with self._channel() as channel:
                    for sub in list(self._subs.values()):
                        ok = await channel.queue_declare(sub.queue_name, passive=True)
                        total += ok.message_count or 0
                self._lag = total
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("RabbitMQ lag probe failed: %s", exc)
