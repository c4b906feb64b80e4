"""The in-process broker behind ``memory://name``: groups of members, routing by key, and the
registry that lets every MemoryTransport of the process with that URL share one."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tidings.topics import SubscriptionIndex
from tidings.transport import (
    DeadMessage,
)
from tidings.transports.memory.messages import _Msg

if TYPE_CHECKING:
    from tidings.transports.memory.consumer import MemorySubscription


log = logging.getLogger("tidings.transports.memory")


class _Group:
    """Members sharing one subscription name; an event goes to exactly one of them."""

    def __init__(self, name: str) -> None:
        self.name = name
        # Replaced, never mutated (under the broker lock), so ``pick`` reads it without the lock.
        self.members: tuple[MemorySubscription, ...] = ()
        self._rr = itertools.count()

    def pick(self, key: str | None) -> MemorySubscription | None:
        members = self.members
        if not members:
            return None
        if key is None:
            return members[next(self._rr) % len(members)]
        return members[zlib.crc32(key.encode()) % len(members)]


class _Broker:
    """The shared state behind one ``memory://name``; thread-safe, loop-agnostic."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.index: SubscriptionIndex[MemorySubscription | _Group] = SubscriptionIndex()
        self.groups: dict[str, _Group] = {}
        self.subs: dict[str, MemorySubscription] = {}  # broadcast subscriptions by name
        self.dead: dict[str, list[DeadMessage]] = {}
        self.refs = 0
        # type -> (broadcast subscriptions, groups); rebuilt, never mutated, so read lock-free.
        self._routes: dict[str, tuple[tuple[MemorySubscription, ...], tuple[_Group, ...]]] = {}

    def changed(self) -> None:
        """Call under ``lock`` after the index changed."""
        self._routes = {}

    def targets(self, msg: _Msg) -> Sequence[MemorySubscription]:
        route = self._routes.get(msg.type)
        if route is None:
            with self.lock:
                matched = self.index.match(msg.type)
                route = (
                    tuple(m for m in matched if not isinstance(m, _Group)),
                    tuple(m for m in matched if isinstance(m, _Group)),
                )
                self._routes[msg.type] = route
        subs, groups = route
        if not groups:
            return subs
        out = list(subs)
        for group in groups:
            member = group.pick(msg.key)
            if member is not None:
                out.append(member)
        return out

    async def deliver(self, msg: _Msg) -> None:
        loop = asyncio.get_running_loop()
        for sub in self.targets(msg):
            if not sub._try_put(msg, loop):
                await sub._offer(msg)

    def hand_back(self, group_name: str, msgs: Sequence[_Msg], redelivery: bool = True) -> None:
        """Give ``msgs`` to the current members of ``group_name`` (any thread)."""
        lost = 0
        for msg in msgs:
            again = msg.again(msg.delivery_count + 1 if redelivery else msg.delivery_count)
            with self.lock:
                group = self.groups.get(group_name)
                first = group.pick(msg.key) if group is not None else None
                members = list(group.members) if group is not None else []
            # The picked member first; if it is closing, any other.
            candidates = [first, *(m for m in members if m is not first)] if first else []
            if not any(m._push_forced(again) for m in candidates if m is not None):
                lost += 1
        if lost:
            log.error(
                "memory group %s: %d unacked message(s) dropped: the group has no member left "
                "(the memory transport keeps nothing without a consumer)",
                group_name,
                lost,
            )


_BROKERS: dict[str, _Broker] = {}
_BROKERS_LOCK = threading.Lock()


def _attach(name: str | None) -> _Broker:
    with _BROKERS_LOCK:
        broker = _Broker(None) if name is None else _BROKERS.setdefault(name, _Broker(name))
        broker.refs += 1
        return broker


def _detach(broker: _Broker) -> None:
    with _BROKERS_LOCK:
        broker.refs -= 1
        if broker.refs <= 0 and broker.name is not None and _BROKERS.get(broker.name) is broker:
            del _BROKERS[broker.name]
