"""MemoryTransport: options, lifecycle, publishing, subscribing, health and dead letters of
the in-process transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tidings.event import Event
from tidings.topics import compile_pattern
from tidings.transport import (
    AsyncHandler,
    Capabilities,
    DeadMessage,
    SubscribeOptions,
    TransportError,
    TransportHealth,
    TransportState,
    TransportStats,
    TransportSubscription,
    subscription_name,
)
from tidings.transports.common import ConnectionReporter, Options
from tidings.transports.memory.broker import _attach, _Broker, _detach, _Group
from tidings.transports.memory.consumer import MemorySubscription
from tidings.transports.memory.messages import _Msg

__all__ = ["MemoryTransport"]

log = logging.getLogger("tidings.transports.memory")

CAPABILITIES = Capabilities(
    ordering=True, persistent=False, consumer_groups=True, replay=False, redelivery=True
)
DEFAULT_BUFFER = 1024
_OPT = Options("memory transport")


class MemoryTransport:
    """In-process Transport; ``memory://name`` shares a broker, ``memory://`` is private.

    Options (keyword or URL query): ``buffer_size`` (per-subscription inbox bound, default
    1024; a full inbox makes publishers wait) and ``on_error`` (called with every handler or
    settle error, in addition to the log).
    """

    capabilities = CAPABILITIES

    def __init__(
        self,
        url: str = "memory://",
        *,
        buffer_size: int | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() != "memory":
            raise TransportError(f"MemoryTransport needs a memory:// URL, got {parts.scheme!r}")
        self.url = url
        name = (parts.netloc + parts.path).strip("/")
        self.name: str | None = name or None
        query = parse_qs(parts.query)
        raw: Any = buffer_size
        if raw is None:
            raw = query["buffer_size"][-1] if "buffer_size" in query else DEFAULT_BUFFER
        self.buffer_size = _OPT.integer("buffer_size", raw)
        self._on_error = on_error
        self._broker: _Broker | None = None
        self._link = ConnectionReporter(log, "memory transport", url, on_error=on_error)
        self._subs: list[MemorySubscription] = []
        self.stats = TransportStats()  # read by exporters

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._link.closed:
            raise TransportError(f"{self.url}: transport is closed; open a new one")
        if self._broker is None:
            self._broker = _attach(self.name)
        self._link.state = TransportState.CONNECTED

    def _broker_or_fail(self) -> _Broker:
        if self._broker is None or self._link.state is not TransportState.CONNECTED:
            what = "closed" if self._link.closed else "not started"
            raise TransportError(f"{self.url}: transport is {what}; call `await start()` first")
        return self._broker

    async def close(self, timeout: float = 5.0) -> None:
        if self._link.closed:
            return
        subs = list(self._subs)
        if subs:
            await asyncio.gather(*(s.close(timeout) for s in subs))
        self._link.state = TransportState.CLOSED
        if self._broker is not None:
            _detach(self._broker)

    def _forget(self, sub: MemorySubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    # ---- publishing ------------------------------------------------------------------------

    async def publish(self, event: Event) -> None:
        broker = self._broker
        if broker is None or self._link.state is not TransportState.CONNECTED:
            broker = self._broker_or_fail()
        msg = _Msg.of(event)
        loop = asyncio.get_running_loop()
        for sub in broker.targets(msg):
            if not sub._try_put(msg, loop):
                await sub._offer(msg)
        self.stats.published += 1

    async def publish_many(self, events: Sequence[Event]) -> None:
        broker = self._broker_or_fail()
        loop = asyncio.get_running_loop()
        for event in events:
            msg = _Msg.of(event)
            for sub in broker.targets(msg):
                if not sub._try_put(msg, loop):
                    await sub._offer(msg)
            self.stats.published += 1

    async def publish_raw(self, raw: bytes, type_: str, key: str | None = None) -> None:
        """Deliver a body as-is where events of ``type_`` go (tests, bridges)."""
        broker = self._broker_or_fail()
        await broker.deliver(_Msg(None, (), bytes(raw), type_, key))

    # ---- subscribing -----------------------------------------------------------------------

    async def subscribe(
        self,
        pattern: str,
        handler: AsyncHandler,
        options: SubscribeOptions | None = None,
    ) -> MemorySubscription:
        compiled = compile_pattern(pattern)  # PatternError before anything else
        opts = options or SubscribeOptions()
        if opts.start == "earliest":
            raise TransportError(
                "the memory transport keeps no history, so start='earliest' cannot replay "
                "(capabilities.replay is False); use a persistent transport or start='new'"
            )
        broker = self._broker_or_fail()
        name = subscription_name(pattern, opts.group)
        sub = MemorySubscription(self, name, pattern, handler, opts, self.buffer_size)
        with broker.lock:
            if opts.group is None:
                broker.subs[name] = sub
                broker.index.add(compiled, sub)
            else:
                group = broker.groups.get(name)
                if group is None:
                    group = broker.groups[name] = _Group(name)
                    broker.index.add(compiled, group)
                group.members = (*group.members, sub)
            broker.changed()
        self._subs.append(sub)
        sub._start()
        return sub

    # ---- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadMessage]:
        broker = self._broker_or_fail()
        with broker.lock:
            return list(broker.dead.get(subscription, ())[:limit])

    async def replay_dead_letters(self, subscription: str) -> int:
        """Deliver the dead messages again to ``subscription`` (or, if it is gone, publish)."""
        broker = self._broker_or_fail()
        with broker.lock:
            dead = broker.dead.pop(subscription, [])
            target: MemorySubscription | _Group | None = broker.subs.get(
                subscription
            ) or broker.groups.get(subscription)
        for dm in dead:
            msg = _Msg(None, (), dm.raw, dm.event_type or "", _key_of(dm))
            if isinstance(target, MemorySubscription):
                await target._offer(msg)
            elif isinstance(target, _Group):
                broker.hand_back(subscription, [msg.again(0)])
            else:
                await broker.deliver(msg)
        return len(dead)

    # ---- health ----------------------------------------------------------------------------

    async def ping(self) -> float:
        began = time.perf_counter()
        self._broker_or_fail()
        await asyncio.sleep(0)
        return time.perf_counter() - began

    def subscriptions(self) -> list[TransportSubscription]:
        return list(self._subs)

    def health(self) -> TransportHealth:
        lag = sum(s.unfinished for s in self._subs)
        return TransportHealth(
            state=self._link.state,
            last_error=self._link.last_error,
            lag=lag,
            detail={
                "broker": self.name or "(private)",
                "subscriptions": len(self._subs),
                "buffer_size": self.buffer_size,
            },
        )

    def __repr__(self) -> str:
        return f"MemoryTransport({self.url!r}, state={self._link.state.value})"


def _key_of(dm: DeadMessage) -> str | None:
    event = dm.event()
    return event.key if event is not None else None
