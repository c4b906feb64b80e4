"""The bus's dead letters: deliveries whose retries are exhausted, kept for inspection and replay.

``DeadLetterRecorder`` is what the bus calls once a delivery has failed for good: it marks the
delivery dead, keeps it in the bounded ``DeadLetterQueue`` (``bus.dead_letters``) and, with
``Bus(publish_dead_letters=True)``, publishes a ``DeadLettered`` event about it.
"""

from __future__ import annotations

import builtins
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tidings.delivery import DeliveryStatus, HandlerDelivery
from tidings.event import Event

__all__ = ["DeadLetter", "DeadLetterQueue", "DeadLetterRecorder", "DeadLettered"]


@dataclass(slots=True)
class DeadLetter:
    """A delivery that failed for good: the event, the handler, the last error and the times."""

    event: Event
    handler: str
    error: str
    error_type: str
    attempts: int
    first_attempt_at: float | None
    failed_at: float
    traceback: str = ""
    subscription: Any = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event.to_dict(),
            "handler": self.handler,
            "error": self.error,
            "error_type": self.error_type,
            "attempts": self.attempts,
            "first_attempt_at": self.first_attempt_at,
            "failed_at": self.failed_at,
        }


class DeadLettered(Event, type="tidings.dead_letter"):
    """Published on the bus when ``Bus(publish_dead_letters=True)``; one per dead delivery."""

    event_id: str
    event_type: str
    handler: str
    error: str
    error_type: str
    attempts: int
    failed_at: float
    original: dict[str, Any] = msgspec.field(default_factory=dict)


class DeadLetterQueue:
    """A bounded, thread-safe list of dead letters; the oldest go first when it is full."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._items: deque[DeadLetter] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self.list())

    def add(self, letter: DeadLetter) -> None:
        with self._lock:
            if self._items.maxlen is not None and len(self._items) == self._items.maxlen:
                self.evicted += 1
            self._items.append(letter)

    def list(self, where: Callable[[DeadLetter], bool] | None = None) -> builtins.list[DeadLetter]:
        with self._lock:
            items = list(self._items)
        return [d for d in items if where is None or where(d)]

    def take(self, where: Callable[[DeadLetter], bool] | None = None) -> builtins.list[DeadLetter]:
        """Remove and return the matching letters (for replay)."""
        with self._lock:
            taken = [d for d in self._items if where is None or where(d)]
            keep = [d for d in self._items if not (where is None or where(d))]
            self._items.clear()
            self._items.extend(keep)
        return taken

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class DeadLetterRecorder:
    """Turns a delivery with no retries left into a DeadLetter, keeps it and announces it."""

    def __init__(self, queue: DeadLetterQueue, publish: Callable[[Event], Any] | None = None):
        self.queue = queue
        self._publish = publish

    def record(self, delivery: HandlerDelivery, error: BaseException, now: float) -> DeadLetter:
        delivery.status = DeliveryStatus.DEAD
        letter = DeadLetter(
            event=delivery.event,
            handler=delivery.handler,
            error=str(error) or type(error).__name__,
            error_type=type(error).__qualname__,
            attempts=delivery.attempts,
            first_attempt_at=delivery.started_at,
            failed_at=now,
            traceback="".join(traceback.format_exception(error)),
            subscription=delivery.subscription,
        )
        self.queue.add(letter)
        if self._publish is not None and not isinstance(delivery.event, DeadLettered):
            self._publish(
                DeadLettered(
                    event_id=letter.event.id,
                    event_type=letter.event.type,
                    handler=letter.handler,
                    error=letter.error,
                    error_type=letter.error_type,
                    attempts=letter.attempts,
                    failed_at=now,
                    original=letter.event.to_dict(),
                ).caused_by(delivery.event)
            )
        return letter
