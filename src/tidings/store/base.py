"""The EventStore protocol and the records, criteria and errors every backend shares.

Backends (memory, sqlite, postgres) each implement ``EventStore`` in one file. The store never
imports the bus: "publish after commit" takes any callable, so a Bus, a transport or a test
list all fit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import msgspec

from tidings.event import Event, EventError, decode
from tidings.topics import compile_pattern

log = logging.getLogger("tidings.store")

__all__ = [
    "ANY",
    "NO_STREAM",
    "ConcurrencyError",
    "Criteria",
    "EventStore",
    "Recorded",
    "SchemaMissing",
    "StoreError",
    "StoreSubscription",
    "StoreUnavailable",
    "SubscriptionLag",
]

ANY: int | None = None  # expected_version: no check
NO_STREAM = 0  # expected_version: the stream must not exist yet


class StoreError(Exception):
    """A store operation failed; the message says what to do."""


class StoreUnavailable(StoreError):
    """The database could not be reached."""


class SchemaMissing(StoreError):
    """The database has no tidings schema: run ``tidings migrate URL``."""


class DuplicateEvent(StoreError):
    """An event id is already stored (or repeated in the batch); nothing was written."""

    def __init__(self, event_id: str) -> None:
        super().__init__(
            f"event id {event_id} is already stored; every event needs a unique id "
            "(leave id unset to get a fresh one); nothing was written"
        )
        self.event_id = event_id


class ConcurrencyError(StoreError):
    """Optimistic concurrency: the stream moved on since the caller read it."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream!r}: expected version {expected}, but it is at version {actual}; "
            "reload the stream and decide again"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


#: The type of the stand-in for a stored row whose body no longer decodes (see ``read_body``).
UNDECODABLE = "tidings.undecodable"
_MAX_SHOWN = 2048  # characters of a bad body kept in the stand-in's data
_logged: set[int] = set()  # positions already logged, so a reader of history is not a flood


def read_body(body: Any, position: int) -> tuple[Event, bool]:
    """The event a stored row holds, and whether it is a stand-in.

    A body that no longer decodes (written by hand, or a typed event's class changed since)
    must not stop every reader at that position forever (a subscription would retry the same
    page without end): it is read as an event of type ``tidings.undecodable`` (data: the
    position, the error and the start of the body), marked invalidated so triggers start
    nothing for it, and every reader goes on past it. Logged once per position per process.
    """
    try:
        return decode(body), False
    except EventError as exc:
        text = bytes(body).decode("utf-8", "replace") if not isinstance(body, str) else body
        if position not in _logged and len(_logged) < 10_000:
            _logged.add(position)
            log.error("stored event at position %d does not decode (%s); read as %s and "
                      "skipped by readers", position, exc, UNDECODABLE)  # fmt: skip
        stand_in = Event(
            type=UNDECODABLE,
            source="tidings.store",
            id=f"undecodable-{position}",
            data={"position": position, "error": str(exc), "body": text[:_MAX_SHOWN]},
        )
        return stand_in, True


class Recorded(msgspec.Struct, frozen=True):
    """An event as stored: its global position, and its stream and version within the stream.

    A msgspec Struct rather than a frozen dataclass: reads build one per event, and the
    dataclass's frozen ``__init__`` cost ten times as much (0.74 µs against 0.08 µs).
    """

    position: int
    event: Event
    stream: str | None = None
    version: int | None = None
    recorded_at: datetime | None = None
    #: True for an event of a block that a chain reorganisation replaced (docs/reorgs.md);
    #: readers return such events only when asked (``Criteria(include_invalidated=True)``).
    invalidated: bool = False


@dataclass(frozen=True, slots=True)
class Criteria:
    """What to read. Every field narrows; ``types`` holds type names or glob patterns.

    ``include_invalidated``: also return events a chain reorganisation invalidated (they are
    kept, marked; ``Recorded.invalidated`` says which). Every reader skips them by default.
    """

    types: tuple[str, ...] = ()
    after_position: int = 0
    since: datetime | None = None
    until: datetime | None = None
    correlation_id: str | None = None
    aggregate_id: str | None = None
    stream: str | None = None
    limit: int | None = None
    include_invalidated: bool = False
    _matchers: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        types: Any = self.types
        if isinstance(types, str):  # Criteria(types="order.*") is a common slip
            object.__setattr__(self, "types", (types,))
        object.__setattr__(self, "_matchers", tuple(compile_pattern(t) for t in self.types))
        if self.after_position < 0:
            raise ValueError(f"Criteria.after_position: expected >= 0, got {self.after_position}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"Criteria.limit: expected >= 1 or None, got {self.limit}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"Criteria.{name}: expected a timezone-aware datetime")

    @property
    def exact_types(self) -> tuple[str, ...] | None:
        """The type names when no pattern is used (a backend can push them into SQL)."""
        if all(m.is_exact for m in self._matchers):
            return self.types
        return None

    def matches(self, rec: Recorded) -> bool:
        """The reference filter: backends push what they can into SQL and use this for the rest."""
        e = rec.event
        if rec.position <= self.after_position:
            return False
        if rec.invalidated and not self.include_invalidated:
            return False
        if self._matchers and not any(m.matches(e.type) for m in self._matchers):
            return False
        if self.since is not None and e.time < self.since:
            return False
        if self.until is not None and e.time >= self.until:
            return False
        if self.correlation_id is not None and e.correlation_id != self.correlation_id:
            return False
        if self.aggregate_id is not None and e.aggregate_id != self.aggregate_id:
            return False
        return self.stream is None or rec.stream == self.stream


Handler = Callable[[Recorded], Any]


def check_page(after_position: int, limit: int) -> None:
    """The argument check every backend's ``read_all`` shares."""
    if after_position < 0 or limit < 1:
        raise ValueError(
            f"read_all: expected after_position >= 0 and limit >= 1, got {after_position}, {limit}"
        )


def check_criteria(criteria: object, what: str = "load()") -> None:
    """Reject anything but a Criteria before a query is built from it."""
    if not isinstance(criteria, Criteria):
        raise TypeError(f"{what}: expected a Criteria, got {type(criteria).__name__}")


@dataclass(frozen=True, slots=True)
class SubscriptionLag:
    """How far a subscription is behind its store."""

    events: int  # events matching its criteria after its position
    seconds: float  # how long the oldest of them has been stored (0.0 when caught up)


@runtime_checkable
class StoreSubscription(Protocol):
    name: str
    handled: int  # events the handler finished
    failed: int  # handler attempts that raised (retries included)
    error: BaseException | None  # why it halted, if it did

    @property
    def position(self) -> int:
        """The last position the handler finished (the durable checkpoint)."""
        ...

    @property
    def running(self) -> bool: ...

    def lag(self) -> SubscriptionLag:
        """Ask the store how far behind this subscription is (a COUNT and a one-row read)."""
        ...

    def stop(self, timeout: float = 5.0) -> None: ...


@runtime_checkable
class EventStore(Protocol):
    """Append-only, globally ordered event storage. Sync methods; ``a``-prefixed for asyncio."""

    url: str

    def append(
        self,
        events: Event | Sequence[Event],
        *,
        stream: str | None = None,
        expected_version: int | None = None,
    ) -> list[Recorded]:
        """Store ``events`` in one transaction; raises ConcurrencyError on a version clash."""
        ...

    async def aappend(
        self,
        events: Event | Sequence[Event],
        *,
        stream: str | None = None,
        expected_version: int | None = None,
    ) -> list[Recorded]: ...

    def read_all(
        self, after_position: int = 0, limit: int = 1000, *, include_invalidated: bool = False
    ) -> list[Recorded]:
        """The log in position order; events a reorg invalidated only when asked."""
        ...

    async def aread_all(
        self, after_position: int = 0, limit: int = 1000, *, include_invalidated: bool = False
    ) -> list[Recorded]: ...

    def load(self, criteria: Criteria) -> list[Recorded]: ...

    async def aload(self, criteria: Criteria) -> list[Recorded]: ...

    def load_stream(self, stream: str, from_version: int = 1) -> list[Recorded]: ...

    async def aload_stream(self, stream: str, from_version: int = 1) -> list[Recorded]: ...

    def stream_version(self, stream: str) -> int:
        """The stream's current version (0 when it does not exist)."""
        ...

    def streams(self, after: str | None = None, limit: int = 100) -> list[tuple[str, int]]:
        """Streams by name after ``after``, at most ``limit``: ``(name, version)`` each."""
        ...

    def subscribe(
        self,
        criteria: Criteria,
        handler: Handler,
        *,
        name: str,
    ) -> StoreSubscription:
        """Catch up from the checkpoint of ``name``, then follow live; runs in the background."""
        ...

    def checkpoint(self, name: str) -> int: ...

    def head(self) -> int:
        """The position of the newest stored event (0 when the store is empty)."""
        ...

    def subscriptions(self) -> list[StoreSubscription]:
        """The subscriptions this store object started, halted ones included."""
        ...

    def reset_subscription(self, name: str, position: int = 0) -> None: ...

    def close(self) -> None: ...
