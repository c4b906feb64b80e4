"""Dead letters: records in the DLQ topic with the error in headers, read from a cursor group."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from tidings.transport import DeadMessage, TransportError
from tidings.transports.kafka.options import _CONNECT_ERRORS
from tidings.transports.kafka.publish import _Publisher
from tidings.transports.kafka.records import (
    CONTENT_TYPE,
    H_ATTEMPTS,
    H_ERROR,
    H_EVENT_ID,
    H_FAILED_AT,
    H_KEY,
    H_REPLAY,
    H_SUBSCRIPTION,
    H_TOPIC,
    H_TYPE,
    _header,
    _Out,
)

_ERROR_HEADER_MAX = 4000


class _DeadLetters(_Publisher):
    """Dead letters: written to ``<prefix>dlq.<name>``, listed and replayed from a cursor."""

    _dlq_locks: dict[str, asyncio.Lock]

    if TYPE_CHECKING:

        def _client_kwargs(self) -> dict[str, Any]: ...

    async def _write_dead_letter(
        self, source_topic: str, key: bytes | None, dead: DeadMessage
    ) -> None:
        """Store a dead message in its subscription's DLQ topic (raises if not stored)."""
        producer = self._require()
        topic = self.dlq_topic(dead.subscription)
        headers: list[tuple[str, bytes]] = [
            (H_SUBSCRIPTION, dead.subscription.encode()),
            (H_ERROR, dead.error[:_ERROR_HEADER_MAX].encode()),
            (H_ATTEMPTS, str(dead.attempts).encode()),
            (H_FAILED_AT, repr(dead.failed_at).encode()),
            (H_TOPIC, source_topic.encode()),
        ]
        if dead.event_id is not None:
            headers.append((H_EVENT_ID, dead.event_id.encode()))
        if dead.event_type is not None:
            headers.append((H_TYPE, dead.event_type.encode()))
        if key is not None:
            headers.append((H_KEY, key))
        async with asyncio.timeout(self.publish_timeout):
            await self._ensure_topic(topic, partitions=1)
            await producer.send_and_wait(topic, dead.raw, key=key, headers=headers)

    def _dlq_lock(self, subscription: str) -> asyncio.Lock:
        lock = self._dlq_locks.get(subscription)
        if lock is None:
            lock = self._dlq_locks[subscription] = asyncio.Lock()
        return lock

    async def _read_dlq(
        self, subscription: str, limit: int | None
    ) -> tuple[list[Any], Any, TopicPartition] | None:
        """Records of the DLQ from its cursor (at most ``limit``) and the consumer holding it."""
        topic = self.dlq_topic(subscription)
        if not await self._topic_exists(topic):
            return None
        tp = TopicPartition(topic, 0)
        consumer = AIOKafkaConsumer(
            group_id=f"{self.prefix}dlq-cursor.{subscription}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._client_kwargs(),
        )
        try:
            await asyncio.wait_for(consumer.start(), self.connect_timeout)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            cursor = await consumer.committed(tp)
            if cursor is None:
                cursor = (await consumer.beginning_offsets([tp]))[tp]
            consumer.seek(tp, cursor)
            records: list[Any] = []
            want = end - cursor if limit is None else min(limit, end - cursor)
            deadline = time.monotonic() + self.publish_timeout
            while len(records) < want:
                if time.monotonic() > deadline:
                    raise TransportError(f"reading dead letters from {topic!r} timed out")
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=want - len(records))
                for rec in batch.get(tp, ()):
                    if rec.offset < end:
                        records.append(rec)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            if isinstance(exc, _CONNECT_ERRORS):
                raise TransportError(f"cannot read the DLQ {topic!r}: {exc}") from exc
            raise
        return records, consumer, tp

    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadMessage]:
        async with self._dlq_lock(subscription):
            found = await self._read_dlq(subscription, limit)
            if found is None:
                return []
            records, consumer, _tp = found
            with contextlib.suppress(Exception):
                await consumer.stop()
        return [_dead_message(subscription, rec) for rec in records]

    async def replay_dead_letters(self, subscription: str) -> int:
        async with self._dlq_lock(subscription):
            found = await self._read_dlq(subscription, None)
            if found is None:
                return 0
            records, consumer, tp = found
            try:
                if not records:
                    return 0
                items = []
                for rec in records:
                    headers = list(rec.headers or ())
                    topic = _header(headers, H_TOPIC) or self.topic
                    type_ = _header(headers, H_TYPE)
                    out_headers = [
                        ("content-type", CONTENT_TYPE),
                        (H_REPLAY, subscription.encode()),
                    ]
                    if type_ is not None:
                        out_headers.append((H_TYPE, type_.encode()))
                    items.append(_Out(topic, rec.key, rec.value or b"", out_headers))
                await self._send(items)
                try:
                    await consumer.commit({tp: records[-1].offset + 1})
                except (KafkaError, OSError) as exc:
                    raise TransportError(
                        f"replayed {len(items)} dead letters of {subscription!r} but could not "
                        f"move the DLQ cursor ({exc}); a later replay sends them again"
                    ) from exc
                return len(items)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()


def _dead_message(subscription: str, rec: Any) -> DeadMessage:
    headers = list(rec.headers or ())
    attempts = _header(headers, H_ATTEMPTS)
    failed_at = _header(headers, H_FAILED_AT)
    return DeadMessage(
        subscription=_header(headers, H_SUBSCRIPTION) or subscription,
        raw=rec.value or b"",
        error=_header(headers, H_ERROR) or "",
        attempts=int(attempts) if attempts and attempts.isdigit() else 0,
        failed_at=float(failed_at) if failed_at else rec.timestamp / 1000,
        event_id=_header(headers, H_EVENT_ID),
        event_type=_header(headers, H_TYPE),
    )
