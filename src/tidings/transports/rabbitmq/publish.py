"""Publishing to RabbitMQ: persistent messages to the topic exchange, confirmed in batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import aiormq
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from tidings.event import Event, encode
from tidings.transport import TransportError, TransportStats
from tidings.transports.common import ConnectionReporter
from tidings.transports.rabbitmq.messages import _NO_DRAIN, CONTENT_TYPE, _Out
from tidings.transports.rabbitmq.routing import _MAX_ROUTING_KEY

log = logging.getLogger("tidings.transports.rabbitmq")

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


class RabbitMQPublishing:
    """Publishing, mixed into ``RabbitMQTransport``: persistent messages, publisher confirms."""

    if TYPE_CHECKING:
        _exchange: str
        _where: str
        _publish_timeout: float
        _publish_batch: int
        stats: TransportStats
        _link: ConnectionReporter

        async def _publisher(self) -> AbstractChannel: ...

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
