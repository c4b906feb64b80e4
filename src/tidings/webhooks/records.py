"""The values of the webhook delivery queue: what it stores, hands to workers and reports.

``tidings.webhooks.queue`` re-exports them; they live here so that the queue module holds the
queue's behaviour only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tidings.event import Event
from tidings.store.base import StoreError

__all__ = [
    "MAX_RESPONSE_BODY",
    "REPLAY_SHARE",
    "STATES",
    "Attempt",
    "Claimed",
    "Outcome",
    "QueueStats",
    "State",
    "WebhookDelivery",
    "WebhookQueueFull",
    "outcome_rows",
    "replay_bound",
]

State = Literal["pending", "delivering", "delivered", "dead", "cancelled"]
STATES: tuple[str, ...] = ("pending", "delivering", "delivered", "dead", "cancelled")
MAX_RESPONSE_BODY = 2048  # bytes of a response body kept in the attempts log


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event's delivery to one endpoint; ``id`` is the ``webhook-id`` header."""

    id: str
    event_id: str
    position: int
    endpoint_id: str
    state: State
    attempts: int
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a worker holds until its lease ends; ``finish`` needs ``lease_token``."""

    delivery: WebhookDelivery
    event: Event
    lease_token: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP request of a delivery, as the attempts log keeps it."""

    delivery_id: str
    number: int
    started_at: float
    duration: float
    status_code: int | None = None
    response_body: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a worker reports for a claimed delivery: the attempt and the state that follows."""

    delivery_id: str
    lease_token: str
    attempt: Attempt
    state: Literal["delivered", "pending", "dead"]
    next_attempt_at: float | None = None  # required with state "pending": when to retry


@dataclass(frozen=True)
class QueueStats:
    pending: int
    delivering: int
    delivered: int
    dead: int
    oldest_pending_age: float | None  # seconds the oldest due pending delivery has waited
    per_endpoint: dict[str, dict[str, int]]  # endpoint id -> state -> count


class WebhookQueueFull(StoreError):
    """``accept(max_pending=...)`` would exceed the bound; nothing was written (``redeliver``:
    ``written`` deliveries were, before the queue filled up).

    ``setting`` names the bound as the caller's user knows it (``tidings serve``: the config's
    ``events.queue_size``).
    """

    def __init__(
        self,
        pending: int,
        max_pending: int,
        adding: int,
        *,
        setting: str = "max_pending",
        written: int = 0,
        message: str | None = None,
    ) -> None:
        done = f"{written} were written first" if written else "nothing was written"
        super().__init__(
            message
            or f"webhook delivery queue is full: {pending} deliveries pending or in flight, "
            f"{adding} more would exceed {setting}={max_pending}; {done}. "
            f"Retry later, raise {setting}, or disable the endpoints that are failing"
        )
        self.pending = pending
        self.max_pending = max_pending
        self.adding = adding
        self.written = written


# A replay fills the queue to this share of its bound at most: the rest stays free for live
# events, which would otherwise be refused until the replay drains.
REPLAY_SHARE = 0.8


def replay_bound(queue_size: int) -> int:
    """Open deliveries a replay may bring the queue to, for a queue bounded at ``queue_size``."""
    return max(1, int(queue_size * REPLAY_SHARE))


# ---------------------------------------------------------------------- the queue


def _truncate(body: str | None) -> str | None:
    if body is None:
        return None
    raw = body.encode()
    if len(raw) <= MAX_RESPONSE_BODY:
        return body
    return raw[:MAX_RESPONSE_BODY].decode("utf-8", errors="ignore")


def outcome_rows(
    outcomes: Sequence[Outcome], now: float
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The attempts-log rows and the delivery updates (``finish`` statement) of a batch,
    in delivery id order (one lock order: no deadlocks); a ValueError names a bad outcome."""
    updates: list[tuple[Any, ...]] = []
    attempts: list[tuple[Any, ...]] = []
    for o in sorted(outcomes, key=lambda o: o.delivery_id):  # one lock order: no deadlocks
        a = o.attempt
        if o.state not in ("delivered", "pending", "dead"):
            raise ValueError(
                f"Outcome.state: expected 'delivered', 'pending' or 'dead', got {o.state!r}"
            )
        if o.state == "pending" and o.next_attempt_at is None:
            raise ValueError(
                f"Outcome.next_attempt_at: delivery {o.delivery_id} goes back to pending, "
                "so it needs the time of its next attempt"
            )
        if a.delivery_id != o.delivery_id:
            raise ValueError(
                f"Outcome.attempt.delivery_id: {a.delivery_id!r} is not the outcome's "
                f"delivery {o.delivery_id!r}"
            )
        updates.append(
            (
                o.state,
                a.number,
                a.status_code,
                None if o.state == "delivered" else a.error,
                o.next_attempt_at if o.state == "pending" else None,
                now if o.state == "delivered" else None,
                now,
                o.delivery_id,
                o.lease_token,
            )
        )
        attempts.append(
            (
                a.delivery_id,
                a.number,
                a.started_at,
                a.duration,
                a.status_code,
                _truncate(a.response_body),
                a.error,
            )
        )
    return attempts, updates
