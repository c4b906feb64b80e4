"""MemorySubscription: one subscription or group member, a bounded inbox pumped into the
shared Dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from tidings.event import Event
from tidings.topics import compile_pattern
from tidings.transport import (
    AsyncHandler,
    DeadMessage,
    SubscribeOptions,
)
from tidings.transports.dispatch import Dispatcher, DispatchStats
from tidings.transports.memory.messages import _Delivery, _Msg

if TYPE_CHECKING:
    from tidings.transports.memory.transport import MemoryTransport


log = logging.getLogger("tidings.transports.memory")


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
