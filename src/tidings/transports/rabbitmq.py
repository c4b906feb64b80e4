"""RabbitMQ transport: a durable topic exchange, one queue per subscription, publisher confirms.

Events are published persistent (delivery_mode=2) to a durable topic exchange with the event
type as routing key, and ``publish`` returns only after the broker's publisher confirm, which
for a durable queue means the message is stored. A subscription is a queue bound with the
pattern mapped onto AMQP wildcards (``*`` -> ``*``, ``**`` -> ``#``) and post-filtered with
``tidings.topics``, so glob semantics are exactly those of every other backend:

- a group shares one durable queue named after ``subscription_name(pattern, group)`` (a quorum
  queue by default: replicated, and it counts deliveries in ``x-delivery-count``); RabbitMQ
  hands each message to one consumer of the queue;
- a broadcast subscription owns an exclusive auto-delete queue that dies with it.

Prefetch equals ``max_in_flight``; a message is acked after the shared Dispatcher acked it and
nacked (requeued) when it says so. When a consumer's channel or connection goes away the broker
requeues everything it had not acked, which is how a crashed member's messages reach the others.
Dead letters go to a durable queue ``<prefix>.dlq.<name>`` that ``dead_letters`` reads without
consuming and ``replay_dead_letters`` moves back into the subscription's queue.

The connection is aio-pika's robust connection: it reconnects by itself and restores channels,
queues, bindings and consumers; ``publish`` waits for the reconnect and publishes again (at
least once: a lost confirm can mean a duplicate, never a loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from tidings.event import Event, decode, encode
from tidings.topics import Pattern, compile_pattern
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
from tidings.transports.common import ConnectionReporter, Options, dead_letter_name
from tidings.transports.dispatch import Dispatcher
from tidings.urls import redact_url

__all__ = ["RabbitMQSubscription", "RabbitMQTransport", "binding_key", "redact_url"]

log = logging.getLogger("tidings.transports.rabbitmq")

CONTENT_TYPE = "application/cloudevents+json"
_MAX_ROUTING_KEY = 255  # bytes, an AMQP shortstr
_MAX_ERROR_HEADER = 4000  # characters of the error text kept in a dead letter's headers
_REPLAY_CHUNK = 200
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

# Failures after which a publish is worth repeating once the connection is back.
_RETRYABLE = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.DeliveryError,
    ConnectionError,
    RuntimeError,
    TimeoutError,
)


# aiormq >= 7 can queue a frame without waiting for the socket to drain; older ones cannot.
_NO_DRAIN: dict[str, Any] = (
    {"wait": False}
    if "wait" in inspect.signature(aiormq.Channel.basic_publish).parameters
    and "wait" in inspect.signature(aiormq.Channel.basic_ack).parameters
    else {}
)


def binding_key(pattern: Pattern) -> str:
    """The AMQP topic binding for a tidings pattern.

    AMQP ``#`` matches zero or more words like tidings ``**`` (``a.#`` matches ``a``, ``a.#.z``
    matches ``a.z``); a literal ``#`` inside a tidings segment would widen the binding, which
    the exact post-filter corrects.
    """
    return ".".join("#" if seg == "**" else seg for seg in pattern.segments)


@dataclass(frozen=True, slots=True)
class _Out:
    """One message to publish: where, what, and whether an unroutable one is an error."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Basic.Properties
    mandatory: bool = False


class RabbitMQTransport:
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

    # ------------------------------------------------------------------ publishing

    def _message(self, event: Event) -> _Out:
        key = event.type
        if len(key.encode()) > _MAX_ROUTING_KEY:
            raise TransportError(
                f"event type {key[:60]!r}... is longer than RabbitMQ's routing key limit "
                f"of {_MAX_ROUTING_KEY} bytes"
            )
        props = Basic.Properties(
            content_type=CONTENT_TYPE, delivery_mode=2, message_id=event.id, message_type=key
        )
        return _Out(self._exchange, key, encode(event), props)

    async def publish(self, event: Event) -> None:
        await self._send([self._message(event)])

    async def publish_many(self, events: Sequence[Event]) -> None:
        out = [self._message(e) for e in events]
        step = self._publish_batch
        for i in range(0, len(out), step):
            await self._send(out[i : i + step])

    async def _send(self, items: list[_Out]) -> None:
        """Publish ``items`` in order and wait for every confirm; retry across reconnects."""
        deadline = time.monotonic() + self._publish_timeout
        pending = items
        while pending:
            try:
                channel = await self._publisher()
                results = await self._attempt(channel, pending, deadline)
            except TransportError:
                raise
            except _RETRYABLE as exc:
                results = [exc] * len(pending)
            failed = [item for item, r in zip(pending, results, strict=True) if r is not None]
            if not failed:
                self.stats.published += len(items)
                return
            error = next(r for r in results if r is not None)
            if (
                isinstance(error, aiormq.exceptions.PublishError)  # returned: unroutable
                or not isinstance(error, _RETRYABLE)
                or time.monotonic() >= deadline
            ):
                if isinstance(error, aiormq.exceptions.PublishError):
                    why = f"returned unroutable (no queue {failed[0].routing_key!r})"
                else:
                    why = f"not confirmed within {self._publish_timeout:.0f}s"
                raise TransportError(
                    f"RabbitMQ at {self._where}: {len(failed)} message(s) {why}: "
                    f"{type(error).__name__}: {error}"
                ) from error
            self._link.report(error, f"{len(failed)} publish(es) not confirmed, retrying")
            pending = failed
            await asyncio.sleep(0.05)

    async def _attempt(
        self, channel: AbstractChannel, items: list[_Out], deadline: float
    ) -> list[BaseException | None]:
        """Publish ``items`` on ``channel``; per item None (confirmed) or the error.

        Stops waiting as soon as the channel closes: a publish queued behind a dead connection
        would otherwise wait forever on the channel's lock.
        """
        tasks = [asyncio.ensure_future(self._publish_one(channel, item)) for item in items]
        batch = asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait(
                [batch, channel.closing],
                timeout=max(deadline - time.monotonic(), 0.01),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if not batch.done():
                for task in tasks:
                    task.cancel()
                await asyncio.gather(batch, return_exceptions=True)
        results: list[BaseException | None] = []
        for task in tasks:
            if task.cancelled():
                reason = "channel closed" if channel.is_closed else "no confirm before deadline"
                results.append(TimeoutError(reason))
            else:
                results.append(task.exception())
        return results

    async def _publish_one(self, channel: AbstractChannel, item: _Out) -> None:
        # wait=False: hold the channel lock only to queue the frames, so confirms pipeline.
        await cast(aiormq.Channel, channel).basic_publish(
            item.body,
            exchange=item.exchange,
            routing_key=item.routing_key,
            properties=item.properties,
            mandatory=item.mandatory,
            **_NO_DRAIN,
        )

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

    async def _write_dead_letter(self, sub: RabbitMQSubscription, dead: DeadMessage) -> None:
        """Store a dead message in the subscription's DLQ; raises if it is not confirmed.

        The DLQ is declared on first use, so subscriptions that never fail leave no queue.
        """
        if not sub.dlq_ready:
            durable = sub.group is not None
            args: dict[str, Any] = {} if durable else {"x-expires": int(self._dlq_ttl * 1000)}
            await self._queue_arguments(sub.dlq_name, args)
            sub.dlq_ready = True
        headers: dict[str, Any] = {
            "x-tidings-subscription": dead.subscription,
            "x-tidings-error": dead.error[:_MAX_ERROR_HEADER],
            "x-tidings-attempts": dead.attempts,
            "x-tidings-failed-at": repr(dead.failed_at),
        }
        if dead.event_id is not None:
            headers["x-tidings-event-id"] = dead.event_id
        if dead.event_type is not None:
            headers["x-tidings-event-type"] = dead.event_type
        props = Basic.Properties(
            content_type=CONTENT_TYPE,
            delivery_mode=2,
            message_id=dead.event_id,
            headers=headers,
        )
        # mandatory: if the DLQ is gone the broker returns it and the Dispatcher nacks.
        try:
            await self._send([_Out("", sub.dlq_name, dead.raw, props, mandatory=True)])
        except TransportError:
            sub.dlq_ready = False  # declare it again next time
            raise

    # ------------------------------------------------------------------ dead letters

    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadMessage]:
        """Read up to ``limit`` dead messages without consuming them (get, then requeue all)."""
        dlq = self._dlq_name(subscription)
        out: list[DeadMessage] = []
        async with self._channel() as channel:
            try:
                await channel.queue_declare(dlq, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return []
            last_tag: int | None = None
            while len(out) < limit:
                msg = await channel.basic_get(dlq, no_ack=False)
                if not isinstance(msg.delivery, Basic.GetOk):
                    break
                last_tag = msg.delivery.delivery_tag
                out.append(_dead_message(subscription, msg))
            if last_tag is not None:
                # Unacked messages go back to their places in the queue, order kept.
                await channel.basic_nack(last_tag, multiple=True, requeue=True)
        return out

    async def replay_dead_letters(self, subscription: str) -> int:
        """Move the dead messages back into the subscription's queue; return how many.

        When the subscription's queue is gone (a closed broadcast subscription) they are
        published to the exchange under their event type instead. Only messages present when
        the call starts are moved, so a handler that fails again cannot loop the replay.
        """
        dlq = self._dlq_name(subscription)
        target = self._queue_name(subscription)
        async with self._channel() as probe:
            try:
                declared = await probe.queue_declare(dlq, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return 0
        remaining = declared.message_count or 0
        direct = await self._queue_exists(target)
        moved = 0
        async with self._channel() as channel:
            while remaining > 0:
                batch: list[tuple[int, _Out]] = []
                skipped: list[int] = []
                while remaining > 0 and len(batch) + len(skipped) < _REPLAY_CHUNK:
                    msg = await channel.basic_get(dlq, no_ack=False)
                    if not isinstance(msg.delivery, Basic.GetOk):
                        remaining = 0
                        break
                    remaining -= 1
                    tag = msg.delivery.delivery_tag or 0
                    out = self._replay_message(msg, target if direct else None)
                    if out is None:
                        skipped.append(tag)
                    else:
                        batch.append((tag, out))
                if batch:
                    await self._send([out for _, out in batch])
                    for tag, _ in batch:
                        await channel.basic_ack(tag)
                    moved += len(batch)
                for tag in skipped:
                    await channel.basic_nack(tag, requeue=True)
        return moved

    def _replay_message(self, msg: aiormq.abc.DeliveredMessage, queue: str | None) -> _Out | None:
        props = msg.header.properties
        headers = dict(props.headers or {})
        event_type = headers.get("x-tidings-event-type")
        for key in list(headers):
            if key.startswith("x-tidings-"):
                del headers[key]
        fresh = Basic.Properties(
            content_type=props.content_type or CONTENT_TYPE,
            delivery_mode=2,
            message_id=props.message_id,
            message_type=event_type if isinstance(event_type, str) else None,
            headers=headers or None,
        )
        if queue is not None:
            return _Out("", queue, msg.body, fresh, mandatory=True)
        if not isinstance(event_type, str):
            log.warning(
                "RabbitMQ DLQ %s: message without an event type kept (its subscription's queue "
                "is gone, so there is nowhere to replay it)",
                msg.routing_key,
            )
            return None
        return _Out(self._exchange, event_type, msg.body, fresh)

    async def _queue_exists(self, queue: str) -> bool:
        async with self._channel() as channel:
            try:
                await channel.queue_declare(queue, passive=True)
            except (
                aiormq.exceptions.ChannelNotFoundEntity,
                aiormq.exceptions.ChannelLockedResource,
            ):
                return False
        return True

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


def _dead_message(subscription: str, msg: aiormq.abc.DeliveredMessage) -> DeadMessage:
    headers = msg.header.properties.headers or {}

    def text(key: str) -> str | None:
        value = headers.get(key)
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        return value if isinstance(value, str) else None

    try:
        failed_at = float(text("x-tidings-failed-at") or 0.0)
    except ValueError:
        failed_at = 0.0
    attempts = headers.get("x-tidings-attempts")
    return DeadMessage(
        subscription=text("x-tidings-subscription") or subscription,
        raw=msg.body,
        error=text("x-tidings-error") or "",
        attempts=attempts if isinstance(attempts, int) else 0,
        failed_at=failed_at,
        event_id=text("x-tidings-event-id"),
        event_type=text("x-tidings-event-type"),
    )


async def _settle(message: AbstractIncomingMessage, ok: bool) -> None:
    """Ack (or nack with requeue) without waiting for the socket to drain.

    The frame is queued in order on the message's own channel; waiting for the drain would put
    a write round trip between consecutive messages of a key. If the channel is gone this
    raises, and the broker redelivers the message (the Dispatcher counts it).
    """
    channel = message.channel  # raises ChannelInvalidStateError when closed
    tag = message.delivery_tag
    if tag is None:
        return
    if ok:
        await channel.basic_ack(tag, **_NO_DRAIN)
    else:
        await channel.basic_nack(tag, requeue=True, **_NO_DRAIN)


class RabbitMQSubscription:
    """One queue consumed on its own robust channel, feeding a Dispatcher."""

    def __init__(
        self,
        transport: RabbitMQTransport,
        name: str,
        pattern: Pattern,
        options: SubscribeOptions,
        handler: AsyncHandler,
    ) -> None:
        self.name = name
        self.pattern = pattern.text
        self.group = options.group
        self.queue_name = transport._queue_name(name)
        self.dlq_name = transport._dlq_name(name)
        self._transport = transport
        self._compiled = pattern
        self._options = options
        self._dispatcher = Dispatcher(
            name,
            handler,
            options,
            partial(transport._write_dead_letter, self),
            on_error=transport._link.notify,
        )
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractRobustQueue | None = None
        self._tag: str | None = None
        self._closing = False
        self._closed = False
        self.skipped = 0  # messages the binding let through but the exact pattern did not
        self.dlq_ready = False

    @property
    def stats(self) -> Any:
        return self._dispatcher.stats

    async def open(self, conn: AbstractRobustConnection) -> None:
        t = self._transport
        durable = self.group is not None
        args: dict[str, Any] | None = None
        if durable:
            args = await t._queue_arguments(self.queue_name, {"x-queue-type": t._queue_type})
        channel: AbstractRobustChannel = await conn.channel(publisher_confirms=False)
        self._channel = channel
        try:
            await channel.set_qos(prefetch_count=self._options.max_in_flight)
            exchange = await channel.declare_exchange(
                t._exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue: AbstractRobustQueue
            if durable:
                queue = await channel.declare_queue(
                    self.queue_name, durable=True, arguments=args, passive=args is None
                )
            else:
                queue = await channel.declare_queue(
                    self.queue_name, durable=False, exclusive=True, auto_delete=True
                )
            await queue.bind(exchange, routing_key=binding_key(self._compiled))
            self._queue = queue
            self._tag = await queue.consume(self._on_message)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._closing:
            return  # left unacked: closing the channel hands it back to the queue
        body = message.body
        event: Event | None
        error: str | None = None
        try:
            event = decode(body)
        except Exception as exc:
            event, error = None, str(exc)
        if event is not None and not self._compiled.matches(event.type):
            self.skipped += 1
            await _settle(message, True)
            return
        headers = message.headers or {}
        count = headers.get("x-delivery-count")
        deliveries = count + 1 if isinstance(count, int) else 2 if message.redelivered else 1
        limit = self._transport._max_deliveries
        if limit is not None and deliveries > limit:
            await self._write_unacked_dead_letter(message, event, deliveries - 1)
            return
        inbound = Inbound(
            raw=body,
            event=event,
            ack=partial(_settle, message, True),
            nack=partial(_settle, message, False),
            delivery_count=deliveries,
            decode_error=error,
        )
        await self._dispatcher.submit(inbound)

    async def _write_unacked_dead_letter(
        self, message: AbstractIncomingMessage, event: Event | None, taken: int
    ) -> None:
        """Dead-letter a message that was taken ``taken`` times and never acked."""
        error = (
            f"delivered {taken} time(s) without an ack (max_deliveries="
            f"{self._transport._max_deliveries}): its handler may kill the process"
        )
        log.error("subscription %s: %s; dead-lettered", self.name, error)
        dead = DeadMessage(
            subscription=self.name,
            raw=message.body,
            error=error,
            attempts=taken,
            failed_at=time.time(),
            event_id=event.id if event is not None else None,
            event_type=event.type if event is not None else None,
        )
        try:
            await self._transport._write_dead_letter(self, dead)
        except Exception as exc:
            self._transport._link.notify(exc)
            await _settle(message, False)
            return
        self._dispatcher.stats.dead += 1
        await _settle(message, True)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop consuming, finish what is in flight within ``timeout``, hand back the rest.

        Unfinished messages are never acked: closing the channel makes RabbitMQ requeue them
        for the other members of the group (or drop them with a broadcast queue).
        """
        if self._closed:
            return
        self._closed = True
        self._closing = True
        t = self._transport
        try:
            if self._queue is not None and self._tag is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._queue.cancel(self._tag), max(timeout, 0.5))
            left = await self._dispatcher.close(timeout)
            if left:
                log.warning(
                    "subscription %s: %d message(s) unfinished at close; handed back to "
                    "RabbitMQ for redelivery",
                    self.name,
                    left,
                )
            if self._channel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._channel.close(), max(timeout, 0.5))
        finally:
            t._forget(self)
