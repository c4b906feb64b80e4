"""Publishing records: keyed by ``event.key``, acknowledged by the broker before returning."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]

from tidings.event import Event, encode
from tidings.transport import TransportError, TransportStats
from tidings.transports.common import ConnectionReporter
from tidings.transports.kafka.records import CONTENT_TYPE, H_TYPE, _Out
from tidings.transports.kafka.topics import _Topics


class _Publisher(_Topics):
    """Publishing: one record batch per partition, resent from a failure on."""

    max_batch_size: int
    stats: TransportStats
    _link: ConnectionReporter
    _key_partitions: dict[str, tuple[dict[bytes, int], list[int]]]

    def _out(self, event: Event) -> _Out:
        key = event.key or event.type  # keyless events stay ordered per type
        return _Out(
            topic=self.topic_for(event.type),
            key=key.encode(),
            value=encode(event),
            headers=[("content-type", CONTENT_TYPE), (H_TYPE, event.type.encode())],
        )

    async def publish(self, event: Event) -> None:
        await self._send([self._out(event)])

    async def publish_many(self, events: Sequence[Event]) -> None:
        if events:
            await self._send([self._out(e) for e in events])

    async def _send(self, items: list[_Out]) -> None:
        producer = self._require()
        try:
            async with asyncio.timeout(self.publish_timeout):
                for topic in {item.topic for item in items}:
                    await self._ensure_topic(topic)
                await self._deliver(producer, items)
        except TransportError as exc:
            self._link.lost(str(exc))
            raise
        except TimeoutError as exc:
            error = TransportError(
                f"publish to the {self._where()} was not acknowledged within "
                f"{self.publish_timeout:g}s (broker down or unreachable?); it may or may not "
                "have been stored: publish again (consumers see at-least-once)"
            )
            self._link.lost(str(error))
            raise error from exc
        except (KafkaError, OSError) as exc:
            self._link.lost(str(exc))
            raise TransportError(f"publish to the {self._where()} failed: {exc}") from exc
        self._link.connected()
        self.stats.published += len(items)

    async def _partition_of(self, producer: Any, item: _Out) -> int:
        """Kafka's default partitioner (murmur2 of the key), memoized per topic and key."""
        cache = self._key_partitions.get(item.topic)
        if cache is None:
            parts = sorted(await producer.partitions_for(item.topic))
            cache = self._key_partitions[item.topic] = ({}, parts)
        by_key, parts = cache
        key = item.key or b""
        partition = by_key.get(key)
        if partition is None:
            partition = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
            if len(by_key) > 100_000:
                by_key.clear()
            by_key[key] = partition
        return partition

    async def _deliver(self, producer: Any, items: list[_Out]) -> None:
        """Send one record batch per partition, await every ack, resend from a failure on.

        Building the batches here skips a future and an accumulator lookup per record. When a
        batch fails with a retriable error, it and every later batch of its partition are sent
        again (order per key holds; records of those batches may be stored twice).
        """
        if len(items) == 1:
            await self._deliver_one(producer, items[0])
            return
        pending = items
        while pending:
            groups: dict[tuple[str, int], list[_Out]] = {}
            for item in pending:
                partition = await self._partition_of(producer, item)
                groups.setdefault((item.topic, partition), []).append(item)
            sent: list[tuple[Any, list[_Out], tuple[str, int]]] = []
            for (topic, partition), outs in groups.items():
                batch = producer.create_batch()
                chunk: list[_Out] = []
                for out in outs:
                    if (
                        batch.append(
                            key=out.key, value=out.value, timestamp=None, headers=out.headers
                        )
                        is None
                    ):
                        if not chunk:
                            raise TransportError(
                                f"an event of {len(out.value)} bytes does not fit a Kafka batch "
                                f"(max_batch_size={self.max_batch_size}); raise max_batch_size"
                            )
                        future = await producer.send_batch(batch, topic, partition=partition)
                        sent.append((future, chunk, (topic, partition)))
                        batch, chunk = producer.create_batch(), []
                        batch.append(
                            key=out.key, value=out.value, timestamp=None, headers=out.headers
                        )
                    chunk.append(out)
                if chunk:
                    future = await producer.send_batch(batch, topic, partition=partition)
                    sent.append((future, chunk, (topic, partition)))
            results = await asyncio.gather(*(f for f, _, _ in sent), return_exceptions=True)
            again: list[_Out] = []
            failed: set[tuple[str, int]] = set()
            error: BaseException | None = None
            for (_f, chunk, tp), result in zip(sent, results, strict=True):
                if isinstance(result, BaseException):
                    if not getattr(result, "retriable", False):
                        raise result
                    error = error or result
                    failed.add(tp)
                if tp in failed:
                    again.extend(chunk)
            if error is not None:
                self._link.report(error, f"publish failed, sending {len(again)} record(s) again")
                await asyncio.sleep(0.2)
            pending = again

    async def _deliver_one(self, producer: Any, out: _Out) -> None:
        """One record through the producer's accumulator, so concurrent single publishes share
        the open batch of their partition instead of queueing a batch each behind it."""
        partition = await self._partition_of(producer, out)
        while True:
            try:
                future = await producer.send(
                    out.topic,
                    value=out.value,
                    key=out.key,
                    partition=partition,
                    headers=out.headers,
                )
                await future
                return
            except KafkaError as exc:
                if not getattr(exc, "retriable", False):
                    raise
                self._link.report(exc, "publish failed, sending the record again")
                await asyncio.sleep(0.2)
