"""The Transport protocol: what every broker backend offers, and the flags that say how.

A transport moves encoded events between processes. Backends (``tidings.transports.*``) only
publish, fetch, ack and nack; the shared ``tidings.transports.dispatch.Dispatcher`` gives every
one of them the same consumer semantics (bounded in-flight, order per key, retries that do not
stall the stream, dead letters), so moving from one broker to another changes a URL, not code.
"""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from tidings.event import Event, decode
from tidings.retry import RetryPolicy

__all__ = [
    "Capabilities",
    "DeadMessage",
    "Inbound",
    "SubscribeOptions",
    "Transport",
    "TransportError",
    "TransportHealth",
    "TransportState",
    "TransportStats",
    "TransportSubscription",
    "subscription_name",
]

AsyncHandler = Callable[[Event], Awaitable[Any] | Any]


class TransportError(RuntimeError):
    """A transport failed in a way the caller must hear about (bad URL, unreachable server)."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend guarantees; the contract suite skips what a backend does not claim."""

    ordering: bool  # events of one key arrive in publish order
    persistent: bool  # published events survive a server restart
    consumer_groups: bool  # one member of a group gets each event
    replay: bool  # a new subscription can start from the earliest retained event
    redelivery: bool  # an unacked message taken by a crashed consumer is delivered again


class TransportState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(slots=True)
class TransportStats:
    """What a transport counts itself, for exporters; consumption is counted per subscription
    (its ``stats``, the Dispatcher's counters)."""

    published: int = 0  # events the server accepted (publish and publish_many)


@dataclass(slots=True)
class TransportHealth:
    state: TransportState
    last_error: str | None = None
    lag: int | None = None  # messages waiting for this process, where the backend knows
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state is TransportState.CONNECTED


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    """How a subscription consumes.

    ``group=None`` broadcasts: every subscription gets every event. Subscriptions sharing a
    ``group`` split the events between them and are durable: they resume where the group
    left off. ``ack_wait`` is how long a taken, unacked message stays with a consumer before
    the backend gives it to another (the crash-recovery delay).
    """

    group: str | None = None
    max_in_flight: int = 64
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(initial_delay=0.5))
    ack_wait: float = 30.0
    start: Literal["new", "earliest"] = "new"

    def __post_init__(self) -> None:
        n = self.max_in_flight
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_in_flight: expected a whole number >= 1, got {n!r}")
        if self.ack_wait <= 0:
            raise ValueError(f"ack_wait: expected seconds > 0, got {self.ack_wait!r}")
        if self.start not in ("new", "earliest"):
            raise ValueError(f"start: expected 'new' or 'earliest', got {self.start!r}")


@dataclass(slots=True)
class Inbound:
    """One message as a backend hands it to the dispatcher.

    ``event`` is None when the body did not decode; ``raw`` keeps the body for the dead-letter
    record. ``ack`` settles the message for good; ``nack`` hands it back for redelivery.
    """

    raw: bytes
    event: Event | None
    ack: Callable[[], Awaitable[None]]
    nack: Callable[[], Awaitable[None]]
    delivery_count: int = 1
    decode_error: str | None = None

    @property
    def key(self) -> str | None:
        return self.event.key if self.event is not None else None


@dataclass(slots=True)
class DeadMessage:
    """A message whose handler failed for good (or that did not decode), kept per subscription."""

    subscription: str
    raw: bytes
    error: str
    attempts: int
    failed_at: float
    event_id: str | None = None
    event_type: str | None = None

    def event(self) -> Event | None:
        try:
            return decode(self.raw)
        except Exception:
            return None


@runtime_checkable
class TransportSubscription(Protocol):
    name: str
    pattern: str
    group: str | None

    async def close(self, timeout: float = 5.0) -> None:
        """Stop taking messages, finish (or hand back) the ones in flight."""
        ...


@runtime_checkable
class Transport(Protocol):
    """A broker backend. Every method is a coroutine except ``health``."""

    url: str
    capabilities: Capabilities
    stats: TransportStats

    async def start(self) -> None:
        """Connect; raise TransportError naming the server when it cannot be reached."""
        ...

    async def publish(self, event: Event) -> None:
        """Return once the server has accepted (and, if persistent, stored) the event."""
        ...

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Publish a batch in as few round trips as the backend allows, order kept."""
        ...

    async def subscribe(
        self,
        pattern: str,
        handler: AsyncHandler,
        options: SubscribeOptions | None = None,
    ) -> TransportSubscription:
        """Deliver events whose type matches ``pattern`` to ``handler`` (see SubscribeOptions)."""
        ...

    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadMessage]:
        """The dead messages of one subscription (its ``name``), oldest first."""
        ...

    async def replay_dead_letters(self, subscription: str) -> int:
        """Publish the dead messages of ``subscription`` again, remove them, return how many."""
        ...

    async def ping(self) -> float:
        """Round trip to the server in seconds; raises TransportError when it is down."""
        ...

    def health(self) -> TransportHealth: ...

    def subscriptions(self) -> list[TransportSubscription]:
        """The subscriptions open on this transport (exporters read their ``stats``)."""
        ...

    async def close(self, timeout: float = 5.0) -> None: ...


def subscription_name(pattern: str, group: str | None) -> str:
    """A broker-safe name for a subscription, used for durable consumers and its DLQ.

    Members of one group get the same name (they share a cursor and a DLQ); a broadcast
    subscription gets a unique one, since it owns its cursor alone.
    """
    base = group if group is not None else f"bc-{pattern}"
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", base).strip("_") or "sub"
    salt = "" if group is not None else uuid.uuid4().hex
    digest = hashlib.sha1(f"{pattern}|{group}|{salt}".encode()).hexdigest()[:10]
    return f"{safe[:40]}-{digest}"
