"""Publishing to Redis: one stream entry (or pub/sub message) per event, pipelined in batches."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from redis import exceptions as rexc

from tidings.event import Event, encode
from tidings.transport import TransportError, TransportStats
from tidings.transports.common import Backoff, ConnectionReporter
from tidings.transports.redis.entries import _NO_TYPE
from tidings.transports.redis.loops import _GONE


class RedisPublishing:
    """Publishing, mixed into ``RedisTransport``: XADD to the stream, or PUBLISH per type."""

    if TYPE_CHECKING:
        prefix: str
        mode: Literal["streams", "pubsub"]
        stream: str
        maxlen: int | None
        publish_timeout: float
        server: str
        stats: TransportStats
        _link: ConnectionReporter

        @property
        def client(self) -> Any: ...

        def _report(self, exc: BaseException, what: str) -> None: ...

        def _backoff(self) -> Backoff: ...

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
