"""The RabbitMQ consumer: one queue per subscription on its own robust channel, acked after
the Dispatcher settled each message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)

from tidings.event import Event, decode
from tidings.topics import Pattern
from tidings.transport import AsyncHandler, DeadMessage, Inbound, SubscribeOptions
from tidings.transports.dispatch import Dispatcher
from tidings.transports.rabbitmq.messages import _NO_DRAIN
from tidings.transports.rabbitmq.routing import binding_key

if TYPE_CHECKING:
    from tidings.transports.rabbitmq.transport import RabbitMQTransport

log = logging.getLogger("tidings.transports.rabbitmq")


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
