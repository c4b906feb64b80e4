"""Dead letters on RabbitMQ: writing, listing and replaying the ``<prefix>.dlq.<name>`` queues."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aiormq
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from tidings.transport import DeadMessage, TransportError
from tidings.transports.rabbitmq.messages import CONTENT_TYPE, _Out

if TYPE_CHECKING:
    from tidings.transports.rabbitmq.consumer import RabbitMQSubscription

log = logging.getLogger("tidings.transports.rabbitmq")

_MAX_ERROR_HEADER = 4000  # characters of the error text kept in a dead letter's headers
_REPLAY_CHUNK = 200


class RabbitMQDeadLetters:
    """Dead letters, mixed into ``RabbitMQTransport``: a durable queue per subscription."""

    if TYPE_CHECKING:
        _exchange: str
        _dlq_ttl: float

        def _channel(self) -> contextlib.AbstractAsyncContextManager[AbstractChannel]: ...

        def _queue_name(self, name: str) -> str: ...

        def _dlq_name(self, name: str) -> str: ...

        async def _queue_arguments(
            self, queue: str, arguments: dict[str, Any]
        ) -> dict[str, Any] | None: ...

        async def _send(self, items: list[_Out]) -> None: ...

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
