"""The status of one delivery of an event to one handler.

pending -> processing -> completed | failed (a retry is scheduled) | dead.

Status belongs to a delivery, not to the event: the same event can be completed by one handler
and dead for another.
"""

from __future__ import annotations

import enum
from typing import Any

from tidings.event import Event

__all__ = ["DeliveryStatus", "HandlerDelivery"]


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    #: The last attempt failed and a retry is scheduled.
    FAILED = "failed"
    #: Retries are exhausted; the delivery is in the dead-letter queue.
    DEAD = "dead"


class HandlerDelivery:
    """One (event, handler) pair and its history. Times are wall-clock epoch seconds."""

    __slots__ = (
        "attempts",
        "created_at",
        "error",
        "error_type",
        "event",
        "finished_at",
        "handler",
        "next_attempt_at",
        "started_at",
        "status",
        "subscription",
    )

    def __init__(self, event: Event, subscription: Any, handler: str, now: float) -> None:
        self.event = event
        self.subscription = subscription
        self.handler = handler
        self.status = DeliveryStatus.PENDING
        self.attempts = 0
        self.created_at = now
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.next_attempt_at: float | None = None
        self.error: str | None = None
        self.error_type: str | None = None

    @property
    def retries(self) -> int:
        """Retries made so far (attempts after the first)."""
        return max(self.attempts - 1, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event.id,
            "event_type": self.event.type,
            "handler": self.handler,
            "status": str(self.status),
            "attempts": self.attempts,
            "retries": self.retries,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "next_attempt_at": self.next_attempt_at,
            "error": self.error,
            "error_type": self.error_type,
        }

    def __repr__(self) -> str:
        return (
            f"HandlerDelivery(event={self.event.id!r}, handler={self.handler!r}, "
            f"status={self.status.value!r}, attempts={self.attempts})"
        )
