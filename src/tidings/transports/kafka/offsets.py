"""Offsets of one partition handed to the dispatcher, and the ack/nack handle of one record."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from tidings.event import Event

if TYPE_CHECKING:
    from tidings.transports.kafka.consumer import KafkaSubscription


class _Partition:
    """Offsets handed to the dispatcher from one partition; commits stop at the first unacked."""

    __slots__ = ("committed", "done", "gap", "next", "pending", "revoked", "start")

    def __init__(self, committed: int | None) -> None:
        self.start: int | None = committed
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.next: int | None = None
        self.committed = committed
        self.revoked = False
        # (offset expected, monotonic time it was first found missing) while a gap is held
        self.gap: tuple[int, float] | None = None

    def expected(self) -> int | None:
        """The offset the next record should have, if known."""
        return self.next if self.next is not None else self.start

    def take(self, offset: int) -> None:
        self.pending.append(offset)
        self.next = offset + 1

    def ack(self, offset: int) -> None:
        self.done.add(offset)
        pending, done = self.pending, self.done
        while pending and pending[0] in done:
            done.discard(pending.popleft())

    def watermark(self) -> int | None:
        """The offset to commit: the first unacked one, or one past the last taken."""
        return self.pending[0] if self.pending else self.next


class _Handle:
    """What an ack or nack of one delivered record needs (bound methods, no closures)."""

    __slots__ = ("count", "error", "event", "part", "raw", "rec", "sub", "tp")

    def __init__(
        self,
        sub: KafkaSubscription,
        tp: Any,
        part: _Partition,
        rec: Any,
        raw: bytes,
        event: Event | None,
        error: str | None,
        count: int,
    ) -> None:
        self.sub, self.tp, self.part, self.rec = sub, tp, part, rec
        self.raw, self.event, self.error, self.count = raw, event, error, count

    async def ack(self) -> None:
        self.sub._acked(self)

    async def nack(self) -> None:
        # Kafka cannot hand one record back: deliver it again here, later. Its offset stays
        # uncommitted meanwhile, so a crash before then redelivers it through the group.
        self.sub._spawn(self.sub._again(self))
