"""The in-process transport: the Transport protocol without a server.

It exists so code written against a broker runs unchanged in tests and single-process
deployments, with the same consumer semantics (the shared Dispatcher: bounded in-flight, order
per key, retries, dead letters, ack after success). ``memory://name`` names a broker shared by
every MemoryTransport of the process with that URL, on any event loop, so two "services" in one
test talk to each other; bare ``memory://`` gives a private broker.

Each subscription (or group member) owns a bounded inbox: a publisher waits while the inbox is
full (backpressure) instead of growing memory. Members of a group share a name; an event goes
to one member, chosen by its key (so one key stays with one member and in order) or round-robin
when it has none. A member closed without acking hands what it had taken back to the group after
``ack_wait``; what it had not yet taken goes back at once. Nothing survives the process
(``persistent=False``), and a group lives only while it has a member.

Isolation without a codec on the hot path: a handler gets its own copy of the event, equal to
what ``decode(encode(event))`` gives on a real broker, so it can neither see the publisher's
later changes nor change what another subscriber (or a redelivery) sees. Publish takes a private
snapshot and every delivery a copy of it; when the payload is plain JSON values (str, int, bool,
finite float, None, dicts with str keys, lists) and the envelope already is what decoding would
build, that copy is a struct copy plus a copy of the dicts and lists (several times cheaper
than the JSON round trip). Anything else (bytes, tuples, nested structs, datetimes in
``data``, a typed field whose value does not have its declared type, ...) is encoded on publish
and decoded per delivery, exactly as before. The JSON body is encoded from the snapshot only
when something needs it (a dead letter), so dead letters still keep the exact body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from tidings.event import Event, EventError, decode, encode, event_class
from tidings.topics import SubscriptionIndex, compile_pattern
from tidings.transport import (
    AsyncHandler,
    Capabilities,
    DeadMessage,
    Inbound,
    SubscribeOptions,
    TransportError,
    TransportHealth,
    TransportState,
    TransportStats,
    TransportSubscription,
    subscription_name,
)
from tidings.transports.common import ConnectionReporter, Options
from tidings.transports.dispatch import Dispatcher, DispatchStats

__all__ = ["MemorySubscription", "MemoryTransport"]

log = logging.getLogger("tidings.transports.memory")

CAPABILITIES = Capabilities(
    ordering=True, persistent=False, consumer_groups=True, replay=False, redelivery=True
)
DEFAULT_BUFFER = 1024
_OPT = Options("memory transport")

# ---- copies that equal the JSON round trip ------------------------------------------------------


class _NotPlain(Exception):
    """A value whose JSON round trip is not itself: the codec has to decide."""


_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what msgspec encodes as a JSON integer


def _plain_copy(value: Any) -> Any:
    """A deep copy of ``value`` if ``decode(encode(value))`` would equal it exactly."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is int:
        if _INT_MIN <= value <= _INT_MAX:
            return value
    elif kind is float:
        if math.isfinite(value):
            return value
    elif kind is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _NotPlain
            out[k] = _plain_copy(v)
        return out
    elif kind is list:
        return [_plain_copy(v) for v in value]
    raise _NotPlain


_SCALAR_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    bool: (bool,),
    float: (float,),
    str | None: (str, type(None)),
    int | None: (int, type(None)),
    bool | None: (bool, type(None)),
    float | None: (float, type(None)),
}
_JSON_TYPES: tuple[Any, ...] = (Any, dict, list, dict[str, Any], list[Any])
_JSON_TYPES += tuple(t | None for t in _JSON_TYPES[1:])


class _Plan:
    """How events of one (class, type) are copied; None fields mean: use the codec."""

    __slots__ = ("json", "scalars", "typed")

    def __init__(
        self,
        typed: bool,
        scalars: tuple[tuple[str, tuple[type, ...]], ...],
        json: tuple[str, ...],
    ) -> None:
        self.typed = typed  # the payload is in typed fields: ``data`` must stay None
        self.scalars = scalars  # typed fields holding one exact scalar type
        self.json = json  # fields holding any JSON value (dicts and lists are deep-copied)


_PLANS: dict[tuple[type[Event], str], _Plan | None] = {}
_UNPLANNED: Any = object()


def _plan_for(cls: type[Event], type_name: str) -> _Plan | None:
    key = (cls, type_name)
    try:
        return _PLANS[key]
    except KeyError:
        pass
    plan: _Plan | None = None
    # decode() builds the class registered for the type (plain Event if none) and checks it.
    if (
        (event_class(type_name) or Event) is cls
        and type_name
        and not any(c.isspace() for c in type_name)
    ):
        scalars: list[tuple[str, tuple[type, ...]]] = []
        json = ["metadata"]
        ok = True
        if cls.__data_fields__:
            try:
                fields = {f.name: f.type for f in msgspec.structs.fields(cls)}
            except Exception:
                ok = False
            else:
                for name in cls.__data_fields__:
                    hint = fields[name]
                    if hint in _SCALAR_TYPES:
                        scalars.append((name, _SCALAR_TYPES[hint]))
                    elif hint in _JSON_TYPES:
                        json.append(name)
                    else:
                        ok = False
                        break
        else:
            json.append("data")
        if ok:
            plan = _Plan(bool(cls.__data_fields__), tuple(scalars), tuple(json))
    if len(_PLANS) > 10_000:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _snapshot(event: Event) -> tuple[Event, tuple[str, ...]] | None:
    """A private copy of ``event`` equal to its JSON round trip, and its fields to deep-copy.

    None when only the codec can say what a subscriber would get.
    """
    cls = type(event)
    plan = _PLANS.get((cls, event.type), _UNPLANNED)
    if plan is _UNPLANNED:
        plan = _plan_for(cls, event.type)
    if plan is None or event.time.tzinfo is not UTC or not event.id or not event.source:
        return None
    if event.extensions is not None:
        return None  # the codec checks extension names and values, as a real broker's would
    if plan.typed and event.data is not None:
        return None  # encode() rejects it; let it say so
    for name, allowed in plan.scalars:
        value = getattr(event, name)
        kind = type(value)
        if kind not in allowed:
            return None
        if kind is float:
            if not math.isfinite(value):
                return None
        elif kind is int and not _INT_MIN <= value <= _INT_MAX:
            return None
    source: Any = event
    copy: Event = source.__copy__()  # msgspec's C-level shallow copy
    deep: tuple[str, ...] = ()
    for name in plan.json:
        value = getattr(event, name)
        if value is None:
            continue
        if name == "metadata" and type(value) is not dict:
            return None
        try:
            fresh = _plain_copy(value)
        except (_NotPlain, RecursionError):
            return None
        if fresh is not value:
            setattr(copy, name, fresh)
            deep += (name,)
    return copy, deep


class _Msg:
    """One published message: a pristine snapshot (or just the body) plus routing facts.

    Shared by every subscription it goes to and never handed to a handler itself: deliveries
    get copies, so the body encoded from it later is the body as published.
    """

    __slots__ = ("_raw", "deep", "delivery_count", "event", "forced", "key", "type")

    def __init__(
        self,
        event: Event | None,
        deep: tuple[str, ...],
        raw: bytes | None,
        type_: str,
        key: str | None,
        delivery_count: int = 1,
        forced: bool = False,
    ) -> None:
        self.event = event
        self.deep = deep
        self._raw = raw
        self.type = type_
        self.key = key
        self.delivery_count = delivery_count
        self.forced = forced  # handed back or nacked: enters the inbox beyond its bound

    @classmethod
    def of(cls, event: Event) -> _Msg:
        snap = _snapshot(event)
        if snap is None:
            return cls(None, (), encode(event), event.type, event.key)
        return cls(snap[0], snap[1], None, event.type, event.key)

    @property
    def raw(self) -> bytes:
        raw = self._raw
        if raw is None:
            assert self.event is not None
            raw = self._raw = encode(self.event)
        return raw

    def again(self, delivery_count: int) -> _Msg:
        """The same message for another delivery, entering the inbox beyond its bound."""
        return _Msg(self.event, self.deep, self._raw, self.type, self.key, delivery_count, True)

    def open(self) -> tuple[Event | None, str | None]:
        """This delivery's own event (or the decode error)."""
        snap: Any = self.event
        if snap is not None:
            event = snap.__copy__()
            for name in self.deep:
                setattr(event, name, _plain_copy(getattr(snap, name)))
            return event, None
        try:
            return decode(self.raw), None
        except EventError as exc:
            return None, f"undecodable message: {exc}"
        except Exception as exc:  # any other decoder failure is the same bad input
            return None, f"undecodable message: {type(exc).__name__}: {exc}"


class _Delivery(Inbound):
    """An Inbound whose body is encoded only if asked for (a dead letter needs it).

    Its ``__init__`` sets every Inbound field itself (checked below at import).
    """

    __slots__ = ("_msg",)

    def __init__(
        self,
        msg: _Msg,
        event: Event | None,
        error: str | None,
        ack: Callable[[], Any],
        nack: Callable[[], Any],
    ) -> None:
        self._msg = msg
        self.event = event
        self.ack = ack
        self.nack = nack
        self.delivery_count = msg.delivery_count
        self.decode_error = error

    @property
    def raw(self) -> bytes:
        return self._msg.raw

    @raw.setter
    def raw(self, value: bytes) -> None:
        msg = self._msg
        self._msg = _Msg(None, (), bytes(value), msg.type, msg.key, msg.delivery_count)


_DELIVERY_SETS = {"raw", "event", "ack", "nack", "delivery_count", "decode_error"}
if {f.name for f in dataclasses.fields(Inbound)} != _DELIVERY_SETS:  # pragma: no cover
    raise RuntimeError(
        "tidings.transport.Inbound changed its fields; update _Delivery in "
        "tidings/transports/memory.py to set every one of them"
    )

# ---- the broker -------------------------------------------------------------------------------


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


class MemorySubscription:
    """One subscription or group member: a bounded inbox pumped into a Dispatcher.

    The inbox is a deque with a count of bounded entries and FIFO waiters for publishers: a
    publisher on this loop with room appends without a coroutine switch, and the pump takes
    everything queued in one run, feeding the dispatcher without awaiting while it has slots.
    """

    def __init__(
        self,
        transport: MemoryTransport,
        name: str,
        pattern: str,
        handler: AsyncHandler,
        options: SubscribeOptions,
        capacity: int,
    ) -> None:
        self.name = name
        self.pattern = pattern
        self.group = options.group
        self.options = options
        self._transport = transport
        self._broker = transport._broker_or_fail()
        self._loop = asyncio.get_running_loop()
        self._inbox: deque[_Msg] = deque()
        self._capacity = capacity
        self._used = 0  # bounded (not forced) messages in the inbox, or promised to a publisher
        self._space_waiters: deque[asyncio.Future[bool]] = deque()  # publishers, FIFO
        self._pump_waiter: asyncio.Future[None] | None = None
        self._unacked: dict[int, _Msg] = {}
        self._seq = 0
        self._holding: int | None = None
        self._closed = False
        self._dispatcher = Dispatcher(
            name, handler, options, self._write_dead_letter, on_error=transport._on_error
        )
        self._pump_task: asyncio.Task[None] | None = None

    @property
    def stats(self) -> DispatchStats:
        return self._dispatcher.stats

    @property
    def buffered(self) -> int:
        return len(self._inbox)

    def _start(self) -> None:
        self._pump_task = self._loop.create_task(self._pump(), name=f"tidings-memory-{self.name}")

    # ---- the producer side (any loop) ------------------------------------------------------

    def _try_put(self, msg: _Msg, loop: asyncio.AbstractEventLoop) -> bool:
        """Append ``msg`` now if this is our loop, we are open and there is room."""
        if (
            loop is not self._loop
            or self._closed
            or self._used >= self._capacity
            or self._space_waiters
        ):
            return False
        self._used += 1
        self._append(msg)
        return True

    async def _offer(self, msg: _Msg) -> None:
        """Put ``msg`` in the inbox, waiting while it is full; from any event loop."""
        if self._closed:
            self._reroute(msg)
            return
        if asyncio.get_running_loop() is self._loop:
            await self._put(msg)
            return
        if self._loop.is_closed():
            self._reroute(msg)
            return
        future = asyncio.run_coroutine_threadsafe(self._put(msg), self._loop)
        await asyncio.wrap_future(future)

    async def _put(self, msg: _Msg) -> None:
        if self._try_put(msg, self._loop):
            return
        if self._closed or not await self._wait_for_space():
            self._reroute(msg)
            return
        self._append(msg)  # the space was handed to us: _used already counts it

    async def _wait_for_space(self) -> bool:
        """Wait for a free place in the inbox; False when the subscription closed meanwhile."""
        if self._used < self._capacity and not self._space_waiters:
            self._used += 1
            return True
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._space_waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                if waiter.result():
                    self._free_space()  # handed a place while being cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._space_waiters.remove(waiter)
            raise

    def _free_space(self) -> None:
        waiters = self._space_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # the place moves to the waiter: _used unchanged
                return
        self._used -= 1

    def _append(self, msg: _Msg) -> None:
        self._inbox.append(msg)
        waiter = self._pump_waiter
        if waiter is not None:
            self._pump_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _push_forced(self, msg: _Msg) -> bool:
        """Add ``msg`` beyond the bound (a hand-back must not wait); from any thread."""
        if self._closed or self._loop.is_closed():
            return False

        def push() -> None:
            if self._closed:
                self._reroute(msg)
            else:
                self._append(msg)

        try:
            self._loop.call_soon_threadsafe(push)
        except RuntimeError:
            return False
        return True

    def _reroute(self, msg: _Msg) -> None:
        """A message that reached a member as it closed goes to another member of the group."""
        if self.group is not None:
            self._broker.hand_back(self.name, [msg], redelivery=False)

    # ---- the consumer side (this loop) -----------------------------------------------------

    async def _pump(self) -> None:
        inbox = self._inbox
        unacked = self._unacked
        dispatcher = self._dispatcher
        loop = self._loop
        ack, nack = self._acked, self._nacked
        event: Event | None
        while True:
            if not inbox:
                waiter: asyncio.Future[None] = loop.create_future()
                self._pump_waiter = waiter
                await waiter
                continue
            msg = inbox.popleft()
            if not msg.forced:
                if self._space_waiters:
                    self._free_space()
                else:
                    self._used -= 1
            seq = self._seq
            self._seq = seq + 1
            unacked[seq] = msg
            snap: Any = msg.event
            if snap is not None and not msg.deep:
                event, error = snap.__copy__(), None  # the common case of _Msg.open, inline
            else:
                event, error = msg.open()
            delivery = _Delivery(msg, event, error, partial(ack, seq), partial(nack, seq))
            if not dispatcher.try_submit(delivery):
                self._holding = seq  # taken, but waiting for an in-flight slot: not started
                await dispatcher.submit(delivery)
                self._holding = None

    async def _acked(self, seq: int) -> None:
        self._unacked.pop(seq, None)

    async def _nacked(self, seq: int) -> None:
        taken = self._unacked.pop(seq, None)
        if taken is None:
            return
        if self.group is not None:
            self._broker.hand_back(self.name, [taken])
        elif not self._closed:
            self._append(taken.again(taken.delivery_count + 1))

    async def _write_dead_letter(self, dead: DeadMessage) -> None:
        with self._broker.lock:
            self._broker.dead.setdefault(self.name, []).append(dead)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop taking messages and finish the ones in flight within ``timeout``.

        What did not finish stays unacked: a group member hands it back to the group after
        ``ack_wait`` (as a crashed broker consumer would); a broadcast subscription drops it.
        """
        if self._closed:
            return
        self._closed = True
        self._transport._forget(self)
        broker = self._broker
        with broker.lock:
            if self.group is None:
                broker.subs.pop(self.name, None)
                broker.index.remove(compile_pattern(self.pattern), self)
            else:
                group = broker.groups.get(self.name)
                if group is not None and self in group.members:
                    group.members = tuple(m for m in group.members if m is not self)
                    if not group.members:
                        broker.index.remove(compile_pattern(self.pattern), group)
                        del broker.groups[self.name]
            broker.changed()
        while self._space_waiters:
            waiter = self._space_waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)  # wake waiting publishers: they reroute or drop
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        untaken: list[_Msg] = []
        if self._holding is not None:
            held = self._unacked.pop(self._holding, None)
            if held is not None:
                untaken.append(held)
            self._holding = None
        untaken.extend(self._inbox)
        self._inbox.clear()
        self._used = 0
        left = await self._dispatcher.close(timeout)
        unfinished = list(self._unacked.values())
        self._unacked.clear()
        if self.group is not None:
            if untaken:
                broker.hand_back(self.name, untaken, redelivery=False)
            if unfinished:
                timer = threading.Timer(
                    self.options.ack_wait, broker.hand_back, args=(self.name, unfinished)
                )
                timer.daemon = True
                timer.start()
        if left or unfinished or (untaken and self.group is None):
            log.warning(
                "memory subscription %s closed with %d handler(s) unfinished, %d unacked, "
                "%d not yet taken%s",
                self.name,
                left,
                len(unfinished),
                len(untaken),
                (
                    f"; handed back to group {self.group!r}"
                    if self.group is not None
                    else "; dropped (a broadcast subscription keeps nothing after close)"
                ),
            )

    @property
    def unfinished(self) -> int:
        return len(self._unacked) + len(self._inbox)


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
