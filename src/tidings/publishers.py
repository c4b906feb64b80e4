"""Publishers chosen by the environment: ``logging``, ``memory`` or any transport URL.

Seed 004 picks its event publisher from ``EVENT_PUBLISHER_TYPE`` (``logging`` in development,
``redpanda`` in production with ``REDPANDA_BROKERS`` and ``REDPANDA_TOPIC_PREFIX``, an
in-memory one in tests). ``open_publisher()`` reads ``TIDINGS_PUBLISHER`` (``logging``,
``memory``, or a transport URL such as ``kafka://host:9092``), and seed 004's variables as
aliases. Anything wrong (an unknown type, a broker type without its brokers) raises
``PublisherError`` when the publisher is opened, at start-up, and ``await publisher.start()``
connects, so an unreachable broker fails the start-up too, not the first event.

Every publisher has the same four coroutines (``start``, ``publish``, ``publish_many``,
``close``; ``publish_event`` is seed 004's name for ``publish``), so the outbox relay takes any
of them as its target. ``publish`` fills the event's unset request metadata from
``tidings.context`` (what the FastAPI middleware sets).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import quote

from tidings import context
from tidings.event import Event
from tidings.logsink import LogSink
from tidings.transport import Transport, TransportError
from tidings.transports import SCHEMES, open_transport, redact_url

__all__ = [
    "ENV",
    "LoggingPublisher",
    "MemoryPublisher",
    "Publisher",
    "PublisherError",
    "TransportPublisher",
    "open_publisher",
    "publisher_spec",
]

ENV = "TIDINGS_PUBLISHER"
SEED_TYPE = "EVENT_PUBLISHER_TYPE"
SEED_BROKERS = "REDPANDA_BROKERS"
SEED_PREFIX = "REDPANDA_TOPIC_PREFIX"
_SEED_KAFKA = ("redpanda", "kafka")
_SEED_MEMORY = ("memory", "inmemory", "in_memory", "in-memory")


class PublisherError(ValueError):
    """The publisher configuration is wrong; the message names the variable and the fix."""


@runtime_checkable
class Publisher(Protocol):
    name: str

    async def start(self) -> None: ...

    async def publish(self, event: Event) -> None: ...

    async def publish_many(self, events: Sequence[Event]) -> None: ...

    async def close(self, timeout: float = 5.0) -> None: ...


class _Base:
    name = "publisher"

    async def start(self) -> None:
        return None

    async def publish(self, event: Event) -> None:
        await self.publish_many([event])

    async def publish_event(self, event: Event) -> None:
        """Seed 004's name for ``publish``."""
        await self.publish(event)

    async def publish_many(self, events: Sequence[Event]) -> None:
        raise NotImplementedError

    async def close(self, timeout: float = 5.0) -> None:
        return None


def _check(events: Sequence[Event]) -> None:
    for event in events:
        if not isinstance(event, Event):
            raise TypeError(f"publish expects a tidings Event, got {type(event).__name__}")
        context.apply(event)


class LoggingPublisher(_Base):
    """One structured JSON line per event on the ``tidings.events`` logger (development)."""

    name = "logging"

    def __init__(self, logger: logging.Logger | str = "tidings.events") -> None:
        self.sink = LogSink(logger)
        self.published = 0

    async def publish_many(self, events: Sequence[Event]) -> None:
        _check(events)
        for event in events:
            self.sink(event)
        self.published += len(events)


class MemoryPublisher(_Base):
    """Keeps published events in memory, newest ``max_events`` (tests: seed 004's in-memory one)."""

    name = "memory"

    def __init__(self, max_events: int = 100_000) -> None:
        self.events: deque[Event] = deque(maxlen=max_events)
        self.published = 0

    async def publish_many(self, events: Sequence[Event]) -> None:
        _check(events)
        self.events.extend(events)
        self.published += len(events)

    def get_events(self) -> list[Event]:
        return list(self.events)

    def clear(self) -> None:
        self.events.clear()


class TransportPublisher(_Base):
    """Publishes through a transport (Kafka/Redpanda, Redis, NATS, RabbitMQ, PostgreSQL)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.name = transport.url

    async def start(self) -> None:
        await self.transport.start()

    async def publish_many(self, events: Sequence[Event]) -> None:
        _check(events)
        await self.transport.publish_many(events)

    async def close(self, timeout: float = 5.0) -> None:
        await self.transport.close(timeout)


def publisher_spec(env: Mapping[str, str] | None = None) -> str:
    """What the environment asks for: ``logging``, ``memory`` or a transport URL.

    ``TIDINGS_PUBLISHER`` wins; else seed 004's ``EVENT_PUBLISHER_TYPE`` (``redpanda`` needs
    ``REDPANDA_BROKERS``, ``REDPANDA_TOPIC_PREFIX`` is optional); else ``logging``.
    """
    env = os.environ if env is None else env
    spec = env.get(ENV, "").strip()
    if spec:
        return spec
    seed = env.get(SEED_TYPE, "").strip().lower()
    if not seed:
        return "logging"
    if seed == "logging":
        return "logging"
    if seed in _SEED_MEMORY:
        return "memory"
    if seed in _SEED_KAFKA:
        brokers = env.get(SEED_BROKERS, "").strip()
        if not brokers:
            raise PublisherError(
                f"{SEED_TYPE}={seed} needs {SEED_BROKERS} (e.g. {SEED_BROKERS}=localhost:9092, "
                "several separated by commas); set it, or use "
                f"{SEED_TYPE}=logging"
            )
        hosts = ",".join(h.strip() for h in brokers.split(",") if h.strip())
        prefix = env.get(SEED_PREFIX, "").strip()
        if prefix and prefix[-1] not in "._-":
            prefix += "."
        query = "topic_per_type=true" + (f"&prefix={quote(prefix)}" if prefix else "")
        return f"kafka://{hosts}?{query}"
    raise PublisherError(
        f"{SEED_TYPE}={seed!r} is not a publisher type; expected logging, memory or redpanda "
        f"(or set {ENV} to logging, memory or a transport URL)"
    )


def open_publisher(
    spec: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **transport_options: object,
) -> LoggingPublisher | MemoryPublisher | TransportPublisher:
    """The publisher ``spec`` names (default: the environment's, see ``publisher_spec``).

    Not connected yet: ``await publisher.start()`` at start-up.
    """
    source = "argument"
    if spec is None:
        spec = publisher_spec(env)
        source = ENV
    text = spec.strip()
    if text.lower() == "logging":
        return LoggingPublisher()
    if text.lower() == "memory":
        return MemoryPublisher()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in SCHEMES:
        raise PublisherError(
            f"publisher ({source}): {redact_url(text)!r} is not a publisher; expected logging, "
            f"memory or a transport URL ({', '.join(s + '://' for s in sorted(SCHEMES))})"
        )
    try:
        return TransportPublisher(open_transport(text, **transport_options))
    except TransportError as exc:
        raise PublisherError(f"publisher ({source}): {exc}") from None
