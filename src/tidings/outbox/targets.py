"""Where a relay publishes: a Bus, an event store, a transport or publisher, a callable, or several.

A URL is a transport or publisher (``kafka://…``, ``logging``), or with ``store+`` an event
store (``store+sqlite:///events.db``). ``resolve(target)`` wraps each kind behind one
synchronous ``publish(events, timeout)`` that the relay thread calls; it returns once the
target has accepted every event, or raises. Async targets (transports, ``tidings.publishers``,
coroutine functions) run on a private event loop thread owned by the relay, which starts them
and closes them: give the relay a transport that is not started yet, or a URL. A store target
skips events it already holds (same id), so a batch published again after a crash appends each
event once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from tidings.event import Event
from tidings.store.base import DuplicateEvent
from tidings.urls import redact_url

__all__ = ["STORE_PREFIX", "Target", "resolve"]

#: A target URL with this prefix is an event store: ``store+sqlite:///events.db``,
#: ``store+postgresql://…`` (a bare ``postgresql://`` is the PostgreSQL transport).
STORE_PREFIX = "store+"

R = TypeVar("R")


class Target(Protocol):
    name: str

    def start(self) -> None: ...

    def publish(self, events: list[Event], timeout: float) -> None: ...

    def close(self, timeout: float) -> None: ...


class _Loop:
    """A private event loop on its own thread, for the async targets of one relay."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, R], timeout: float | None) -> R:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"the target did not answer within {timeout:g}s") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        if not self.thread.is_alive():
            self.loop.close()


class _Async:
    """Anything with coroutine ``start``/``publish_many``/``close``: transports and publishers."""

    def __init__(self, obj: Any, name: str) -> None:
        self.obj = obj
        self.name = name
        self._loop: _Loop | None = None

    def start(self) -> None:
        self._loop = _Loop(f"tidings-relay-{self.name}")
        start = getattr(self.obj, "start", None)
        if start is None:
            return
        try:
            self._loop.run(start(), None)
        except BaseException:
            self._loop.close()
            self._loop = None
            raise

    def publish(self, events: list[Event], timeout: float) -> None:
        assert self._loop is not None, "target not started"
        self._loop.run(self.obj.publish_many(events), timeout)

    def close(self, timeout: float) -> None:
        if self._loop is None:
            return
        try:
            close = getattr(self.obj, "close", None)
            if close is not None:
                self._loop.run(close(timeout), timeout + 1)
        finally:
            self._loop.close()
            self._loop = None


class _AsyncCallable(_Async):
    async def _each(self, events: list[Event]) -> None:
        for event in events:
            await self.obj(event)

    def start(self) -> None:
        self._loop = _Loop(f"tidings-relay-{self.name}")

    def publish(self, events: list[Event], timeout: float) -> None:
        assert self._loop is not None, "target not started"
        self._loop.run(self._each(events), timeout)

    def close(self, timeout: float) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


class _Sync:
    """A synchronous ``fn(events)``: a Bus's ``publish_many``, a callable per event."""

    def __init__(self, fn: Callable[[list[Event]], Any], name: str) -> None:
        self.fn = fn
        self.name = name

    def start(self) -> None:
        return None

    def publish(self, events: list[Event], timeout: float) -> None:
        self.fn(events)

    def close(self, timeout: float) -> None:
        return None


class _Store(_Sync):
    """An event store: one append per batch; events it already holds are skipped."""

    def __init__(self, store: Any, owned: bool = False) -> None:
        super().__init__(self._append, f"store {redact_url(getattr(store, 'url', '?'))}")
        self.store = store
        self.owned = owned  # opened from a URL by the relay: closed by it too

    def close(self, timeout: float) -> None:
        if self.owned:
            self.store.close()

    def _append(self, events: list[Event]) -> None:
        try:
            self.store.append(events)
        except DuplicateEvent:
            for event in events:  # a batch published again: append what is missing
                with contextlib.suppress(DuplicateEvent):
                    self.store.append(event)


class _FanOut:
    """Several targets, in order; the batch counts as published when all took it."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.name = " + ".join(t.name for t in targets)

    def start(self) -> None:
        started: list[Target] = []
        try:
            for t in self.targets:
                t.start()
                started.append(t)
        except BaseException:
            for t in reversed(started):
                t.close(5.0)
            raise

    def publish(self, events: list[Event], timeout: float) -> None:
        for t in self.targets:
            t.publish(events, timeout)

    def close(self, timeout: float) -> None:
        for t in self.targets:
            t.close(timeout)


def _each(fn: Callable[[Event], Any]) -> Callable[[list[Event]], None]:
    def call(events: list[Event]) -> None:
        for event in events:
            fn(event)

    return call


def resolve(target: Any) -> Target:
    """Wrap ``target`` (see the module docstring); TypeError names what was given instead."""
    if isinstance(target, str) and target.lower().startswith(STORE_PREFIX):
        from tidings.store import open_store  # noqa: PLC0415

        return _Store(open_store(target[len(STORE_PREFIX) :]), owned=True)
    if isinstance(target, str):
        from tidings.publishers import open_publisher  # noqa: PLC0415

        pub = open_publisher(target)
        return _Async(pub, pub.name if "://" not in target else redact_url(target))
    if isinstance(target, list | tuple):
        if not target:
            raise TypeError("relay target: an empty list; give at least one target")
        return _FanOut([resolve(t) for t in target])
    publish_many = getattr(target, "publish_many", None)
    if publish_many is not None and inspect.iscoroutinefunction(publish_many):
        return _Async(target, str(getattr(target, "url", None) or getattr(target, "name", "")))
    if callable(getattr(target, "append", None)) and callable(getattr(target, "read_all", None)):
        return _Store(target)
    if callable(publish_many) and callable(getattr(target, "subscribe", None)):
        return _Sync(publish_many, f"bus {type(target).__name__}")
    if inspect.iscoroutinefunction(target):
        return _AsyncCallable(target, getattr(target, "__name__", "callable"))
    if callable(target):
        return _Sync(_each(target), getattr(target, "__name__", type(target).__name__))
    raise TypeError(
        f"relay target: expected a Bus, an event store, a transport or publisher, a URL or a "
        f"callable, got {type(target).__name__}"
    )
