"""Test doubles: a bus that records, a bus that counts, and a clock that only moves when told.

``NoopBus`` lives with the bus (``tidings.bus.noop``: configuration gives it for
``event_broker.enabled: false``) and is exported here too, beside the other doubles.

Application tests assert on what was published without wiring handlers, and retry schedules
are checked to the millisecond without sleeping. The pytest fixtures wrapping these live in
``tidings.pytest_plugin``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tidings.bus import Bus
from tidings.bus.noop import NoopBus
from tidings.clock import Timer
from tidings.event import Event
from tidings.topics import compile_pattern

__all__ = ["FakeClock", "NoopBus", "RecordingBus"]

E = TypeVar("E", bound=Event)
_MISSING = object()


class RecordingBus(Bus):
    """A Bus that also keeps every event published through it, in publish order.

    Subscribed handlers still run, so a test can record the follow-up events a handler emits.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorded: list[Event] = []
        self._record_lock = threading.Lock()

    def publish(self, event: Event) -> None:
        self._keep(event)
        super().publish(event)

    async def apublish(self, event: Event) -> None:
        self._keep(event)
        await super().apublish(event)

    def _keep(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"publish expects a tidings Event, got {type(event).__name__}")
        with self._record_lock:
            self._recorded.append(event)

    @property
    def events(self) -> list[Event]:
        """A copy of the recorded events, oldest first."""
        with self._record_lock:
            return list(self._recorded)

    def events_of_type(self, kind: str | type[E]) -> list[Any]:
        """Recorded events matching a type name, a glob pattern, or an Event subclass."""
        if isinstance(kind, type):
            if not issubclass(kind, Event):
                raise TypeError(f"events_of_type expects an Event subclass, got {kind.__name__}")
            return [e for e in self.events if isinstance(e, kind)]
        if not isinstance(kind, str):
            raise TypeError(f"events_of_type expects a type name or pattern, got {kind!r}")
        if "*" in kind:
            pattern = compile_pattern(kind)
            return [e for e in self.events if pattern.matches(e.type)]
        return [e for e in self.events if e.type == kind]

    def has_event(self, kind: str | type[Event]) -> bool:
        return bool(self.events_of_type(kind))

    def assert_published(self, kind: str | type[E], **fields: Any) -> Any:
        """Return the first recorded event of ``kind`` whose fields equal ``fields``.

        Typed events are matched on their attributes; a plain event on the keys of its dict
        ``data`` first, then on envelope attributes, so ``id=1`` means the payload's id.
        """
        candidates = self.events_of_type(kind)
        for event in candidates:
            if all(_field(event, k) == v for k, v in fields.items()):
                return event
        name = kind if isinstance(kind, str) else kind.__name__
        if not candidates:
            seen = sorted({e.type for e in self.events}) or ["nothing"]
            raise AssertionError(f"no {name} event was published; published: {', '.join(seen)}")
        wanted = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        got = "; ".join(", ".join(f"{k}={_field(e, k)!r}" for k in fields) for e in candidates[:5])
        raise AssertionError(
            f"{len(candidates)} {name} event(s) published, none with {wanted}; got: {got}"
        )

    def assert_not_published(self, kind: str | type[Event]) -> None:
        found = self.events_of_type(kind)
        if found:
            name = kind if isinstance(kind, str) else kind.__name__
            raise AssertionError(f"expected no {name} event, {len(found)} were published")

    def clear(self) -> None:
        with self._record_lock:
            self._recorded.clear()


def _field(event: Event, name: str) -> Any:
    # A plain event's payload keys win over envelope attributes of the same name ("id").
    if not event.__data_fields__ and isinstance(event.data, dict) and name in event.data:
        return event.data[name]
    return getattr(event, name, _MISSING)


class FakeClock:
    """A clock that stands still until ``advance()``; timers run in the advancing thread.

    ``delays`` lists every delay asked of ``call_later``, so a test can assert a whole
    backoff schedule in one comparison.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = 0.0
        self._epoch = start
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self.delays: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._epoch + self._now

    def pending(self) -> int:
        with self._lock:
            return sum(1 for _, _, t in self._heap if not t.cancelled)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        with self._lock:
            self.delays.append(delay)
            timer = Timer(self._now + max(delay, 0.0), callback)
            heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
            return timer

    def advance(self, seconds: float) -> int:
        """Move time forward, running due timers in time order; returns how many ran.

        A timer scheduled by a callback that falls due within the window runs too, so a
        chain of retries plays out in one call.
        """
        if seconds < 0:
            raise ValueError(f"FakeClock.advance: expected seconds >= 0, got {seconds!r}")
        ran = 0
        with self._lock:
            target = self._now + seconds
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > target:
                    self._now = target
                    return ran
                when, _, timer = heapq.heappop(self._heap)
                self._now = max(self._now, when)
            if not timer.cancelled:
                timer.callback()
                ran += 1
