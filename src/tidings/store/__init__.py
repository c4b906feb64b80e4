"""The event store: append-only, globally ordered, queryable, replayable. One URL picks a backend.

``memory://`` (in-process; ``memory://name`` is shared by every opener in the process),
``sqlite:///relative.db`` or ``sqlite:////absolute/path.db`` (the embedded default; the schema
is applied on first open), ``postgresql://…`` (needs ``pip install 'tidings[postgres]'`` and
``tidings migrate URL``). Each backend module is imported only when its scheme is used.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from tidings.event import Event
from tidings.store.base import (
    ANY,
    NO_STREAM,
    ConcurrencyError,
    Criteria,
    DuplicateEvent,
    EventStore,
    Handler,
    Recorded,
    SchemaMissing,
    StoreError,
    StoreSubscription,
    StoreUnavailable,
)
from tidings.urls import redact_url

__all__ = [
    "ANY",
    "NO_STREAM",
    "SCHEMES",
    "AfterCommit",
    "ConcurrencyError",
    "Criteria",
    "DuplicateEvent",
    "EventStore",
    "Handler",
    "Recorded",
    "SchemaMissing",
    "StoreError",
    "StoreSubscription",
    "StoreUnavailable",
    "as_events",
    "open_store",
    "redact_url",
]

# scheme -> (module, class name, pip extra)
SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("tidings.store.memory", "MemoryStore", None),
    "sqlite": ("tidings.store.sqlite", "SqliteStore", None),
    "postgresql": ("tidings.store.postgres", "PostgresStore", "postgres"),
    "postgres": ("tidings.store.postgres", "PostgresStore", "postgres"),
}


log = logging.getLogger("tidings.store")


def as_events(events: Event | Iterable[Event]) -> list[Event]:
    """``events`` as a list, or a TypeError naming what was given (checked before any write)."""
    if isinstance(events, Event):
        return [events]
    if isinstance(events, str | bytes | bytearray | dict) or not isinstance(events, Iterable):
        raise TypeError(
            f"append(): expected an Event or a sequence of Events, got {type(events).__name__}; "
            "build events as Event(type=...) or a typed subclass"
        )
    out = list(events)
    for index, item in enumerate(out):
        if not isinstance(item, Event):
            raise TypeError(
                f"append(): item {index} is a {type(item).__name__}, not a tidings Event; "
                "nothing was written"
            )
    return out


class AfterCommit:
    """Hands committed events to ``publish`` in commit order, after the commit, never before.

    Backends ``enqueue`` while still holding their write lock (so the queue is in commit order)
    and ``drain`` after releasing it; whichever thread drains publishes everything queued so far,
    so an ``append`` returns only after its own events were handed over. A publish error is
    logged and the append stands: the store is the source of truth, replay re-publishes.
    """

    def __init__(self, publish: Callable[[Event], Any] | Any | None) -> None:
        if publish is not None and not callable(publish):
            publish = getattr(publish, "publish", None)
            if not callable(publish):
                raise TypeError("publish=: expected a callable or an object with .publish(event)")
        self._publish: Callable[[Event], Any] | None = publish
        self._pending: deque[Event] = deque()
        self._lock = threading.RLock()  # a publish handler may append again (re-entrant drain)

    @property
    def active(self) -> bool:
        return self._publish is not None

    def enqueue(self, events: Iterable[Event]) -> None:
        if self._publish is not None:
            self._pending.extend(events)

    def drain(self) -> None:
        publish = self._publish
        if publish is None:
            return
        with self._lock:
            while self._pending:
                event = self._pending.popleft()
                try:
                    publish(event)
                except Exception as exc:
                    log.error(
                        "publish after commit failed for event %s (%s): %s; the event is stored, "
                        "replay it to publish again",
                        event.id,
                        event.type,
                        exc,
                        exc_info=exc,
                    )


def open_store(url: str, **options: Any) -> EventStore:
    """Open the event store for ``url``.

    ``publish=callable`` makes every backend hand each appended event to ``callable`` after the
    transaction commits, in commit order (pass ``bus.publish`` for store + bus). A publish error
    is logged; the append stands.
    """
    if not isinstance(url, str) or "://" not in url:
        shown = redact_url(url) if isinstance(url, str) else url
        raise StoreError(
            f"store URL: expected scheme://..., got {shown!r} "
            "(e.g. 'memory://', 'sqlite:///events.db', 'postgresql://user@host/db')"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise StoreError(
            f"store URL {redact_url(url)!r}: unknown scheme {scheme!r}; "
            f"expected one of {', '.join(sorted(SCHEMES))}"
        )
    module_name, class_name, extra = SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None or exc.name == module_name:
            raise
        raise StoreError(
            f"store {scheme!r} needs a client library that is not installed ({exc.name}); "
            f"run: pip install 'tidings[{extra}]'"
        ) from exc
    cls = getattr(module, class_name)
    store: EventStore = cls(url, **options)
    return store
