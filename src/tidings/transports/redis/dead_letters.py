"""Dead letters on Redis: writing, listing and replaying the ``<prefix>:dlq:<name>`` streams."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from redis import exceptions as rexc

from tidings.transport import DeadMessage, TransportError
from tidings.transports.common import dead_letter_name
from tidings.transports.redis.entries import _F_EVENT, _F_TYPE


class RedisDeadLetters:
    """Dead letters, mixed into ``RedisTransport``: a stream per subscription."""

    if TYPE_CHECKING:
        prefix: str
        mode: Literal["streams", "pubsub"]
        server: str

        @property
        def client(self) -> Any: ...

        def _report(self, exc: BaseException, what: str) -> None: ...

        def _queue_publish(self, pipe: Any, type_name: str | None, body: bytes) -> None: ...

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
