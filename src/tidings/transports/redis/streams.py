"""The Redis Streams consumer: a consumer group per subscription, batched acks, XAUTOCLAIM of
what dead consumers left, heartbeats for what this process still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from redis import exceptions as rexc

from tidings.event import decode
from tidings.transport import AsyncHandler, DeadMessage, Inbound, SubscribeOptions, TransportError
from tidings.transports.common import decode_body
from tidings.transports.redis.entries import _entry
from tidings.transports.redis.loops import _GONE, _stop, log
from tidings.transports.redis.subscription import _RedisSubscriptionBase

if TYPE_CHECKING:
    from tidings.transports.redis.transport import RedisTransport


class RedisStreamSubscription(_RedisSubscriptionBase):
    """One consumer-group member: read loop, claim loop, heartbeat/lag loop and ack batcher."""

    def __init__(
        self,
        transport: RedisTransport,
        name: str,
        pattern: str,
        matches: Callable[[str], bool],
        handler: AsyncHandler,
        options: SubscribeOptions,
    ) -> None:
        super().__init__(transport, name, pattern, matches, handler, options)
        self.group = options.group
        self.consumer = f"{transport._consumer_base}-{uuid.uuid4().hex[:8]}"
        # Entries read by this member and not yet XACKed: skipped if claimed again, and kept
        # fresh by the heartbeat so no other member takes them while we still work on them.
        self._held: set[bytes] = set()
        self._acks: list[bytes] = []
        self._ack_wake = asyncio.Event()
        self._ack_wait_ms = max(1, int(options.ack_wait * 1000))
        self._last_id: bytes = b"0-0"
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def client(self) -> Any:
        return self.transport.client

    async def _ensure_group(self, start: str | bytes) -> None:
        try:
            await self.client.xgroup_create(self.transport.stream, self.name, start, mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def open(self) -> None:
        start = "$" if self.options.start == "new" else "0"
        try:
            await self._ensure_group(start)
            for info in await self.client.xinfo_groups(self.transport.stream):
                if info.get("name") in (self.name, self.name.encode()):
                    self._last_id = info.get("last-delivered-id") or b"0-0"
        except rexc.RedisError as exc:
            self.transport._report(exc, f"subscribe {self.pattern!r}")
            raise TransportError(
                f"subscribe {self.pattern!r}: cannot create consumer group {self.name!r} on "
                f"Redis at {self.transport.server}: {exc}"
            ) from None
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(coro, name=f"tidings-redis-{what}-{self.name}")
            for what, coro in (
                ("read", self._read_loop()),
                ("claim", self._claim_loop()),
                ("heartbeat", self._heartbeat_loop()),
                ("ack", self._ack_loop()),
            )
        ]

    # -- delivery ------------------------------------------------------------------------------

    async def _deliver(
        self, entries: Iterable[tuple[bytes, dict[bytes, bytes]]], counts: dict[bytes, int]
    ) -> None:
        for entry_id, fields in entries:
            if entry_id is None or entry_id in self._held:
                continue  # already ours and in progress (a claim of our own entry)
            if not fields:  # trimmed away (MAXLEN) while pending: nothing left to deliver
                self._ack_now(entry_id)
                continue
            type_name, body = _entry(fields)
            if type_name is not None and not self._wanted(type_name):
                self._ack_now(entry_id)
                continue
            count = counts.get(entry_id, 1)
            limit = self.transport.max_deliveries
            if limit is not None and count > limit:
                await self._write_unacked_dead_letter(entry_id, body, type_name, count)
                continue
            event, error = decode_body(body)
            if type_name is None and event is not None and not self._wanted(event.type):
                self._ack_now(entry_id)
                continue
            self._held.add(entry_id)
            await self._dispatcher.submit(
                Inbound(
                    raw=body,
                    event=event,
                    ack=partial(self._ack, entry_id),
                    nack=partial(self._nack, entry_id),
                    delivery_count=count,
                    decode_error=error,
                )
            )

    async def _write_unacked_dead_letter(
        self, entry_id: bytes, body: bytes, type_name: str | None, count: int
    ) -> None:
        """Dead-letter a message taken ``count`` times without an ack, without running it."""
        event_id: str | None = None
        with contextlib.suppress(Exception):
            event_id = decode(body).id
        error = (
            f"delivered {count} times without an ack (max_deliveries="
            f"{self.transport.max_deliveries}): its consumers died or were killed while handling it"
        )
        log.error("subscription %s: entry %s dead-lettered: %s", self.name, entry_id, error)
        dead = DeadMessage(
            subscription=self.name,
            raw=body,
            error=error,
            attempts=count,
            failed_at=time.time(),
            event_id=event_id,
            event_type=type_name,
        )
        try:
            await self.transport._write_dead_letter(dead)
        except Exception as exc:  # left pending: claimed again later
            self.transport._report(exc, f"subscription {self.name}: dead letter")
            return
        self._ack_now(entry_id)

    def _ack_now(self, entry_id: bytes) -> None:
        self._held.add(entry_id)
        self._acks.append(entry_id)
        self._ack_wake.set()

    async def _ack(self, entry_id: bytes) -> None:
        # Batched: the ack loop sends every id queued meanwhile in one XACK.
        self._acks.append(entry_id)
        self._ack_wake.set()

    async def _nack(self, entry_id: bytes) -> None:
        # Left pending: once idle for ack_wait, a claim loop (ours or a peer's) redelivers it.
        self._held.discard(entry_id)

    # -- loops ---------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        transport = self.transport
        stream = transport.stream
        backoff = transport._backoff()
        recover = False
        while not self._closed:
            try:
                if recover:
                    await self._recover()
                    recover = False
                resp = await self.client.xreadgroup(
                    self.name,
                    self.consumer,
                    {stream: ">"},
                    count=transport.batch_size,
                    block=transport.block_ms,
                )
                transport._link.connected()
                backoff.reset()
            except rexc.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._recreate_group(exc)
                    continue
                transport._report(exc, f"subscription {self.name}: read")
                await backoff.sleep()
                continue
            except _GONE as exc:
                transport._report(exc, f"subscription {self.name}: read")
                recover = True
                await backoff.sleep()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                transport._report(exc, f"subscription {self.name}: read")
                await backoff.sleep()
                continue
            for _stream, entries in resp or ():
                if entries:
                    self._last_id = entries[-1][0]
                await self._deliver(entries, {})

    async def _recreate_group(self, exc: BaseException) -> None:
        """The server lost the group (restart without persistence, or deleted): make it again
        at the last entry we saw, so nothing published since is skipped."""
        log.warning(
            "subscription %s: consumer group missing on %s (%s); recreating at %s",
            self.name,
            self.transport.server,
            exc,
            self._last_id.decode() if isinstance(self._last_id, bytes) else self._last_id,
        )
        try:
            await self._ensure_group(self._last_id)
        except rexc.RedisError as err:
            self.transport._report(err, f"subscription {self.name}: recreate group")
            await asyncio.sleep(0.1)

    async def _recover(self) -> None:
        """After a lost connection: settle queued acks, then re-read our own pending entries.

        A read whose reply was lost with the connection left entries pending under our name
        that we never saw; reading history (id 0) returns them now instead of after ack_wait.
        """
        await self._flush_acks()
        cursor: bytes | str = "0"
        while not self._closed:
            resp = await self.client.xreadgroup(
                self.name,
                self.consumer,
                {self.transport.stream: cursor},
                count=self.transport.batch_size,
            )
            entries = resp[0][1] if resp else []
            if not entries:
                return
            cursor = entries[-1][0]
            fresh = [(i, f) for i, f in entries if i not in self._held]
            await self._deliver(fresh, dict.fromkeys((i for i, _ in fresh), 2))

    async def _claim_loop(self) -> None:
        transport = self.transport
        tick = min(max(self.options.ack_wait / 4, 0.05), 1.0)
        count = max(1, min(transport.batch_size, self.options.max_in_flight * 2))
        while not self._closed:
            await asyncio.sleep(tick)
            try:
                cursor: bytes | str = "0-0"
                while True:
                    resp = await self.client.xautoclaim(
                        transport.stream,
                        self.name,
                        self.consumer,
                        self._ack_wait_ms,
                        start_id=cursor,
                        count=count,
                    )
                    cursor, entries = resp[0], resp[1]
                    fresh = [(i, f) for i, f in entries if i is not None and i not in self._held]
                    if fresh:
                        counts = await self._delivery_counts([i for i, _ in fresh])
                        log.info(
                            "subscription %s: claimed %d message(s) idle > %.1fs from dead "
                            "or slow consumers",
                            self.name,
                            len(fresh),
                            self.options.ack_wait,
                        )
                        await self._deliver(fresh, counts)
                    if cursor in (b"0-0", "0-0"):
                        break
                transport._link.connected()
            except rexc.ResponseError as exc:
                if "NOGROUP" not in str(exc):  # the read loop recreates a lost group
                    transport._report(exc, f"subscription {self.name}: claim")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                transport._report(exc, f"subscription {self.name}: claim")

    async def _delivery_counts(self, ids: list[bytes]) -> dict[bytes, int]:
        try:
            rows = await self.client.xpending_range(
                self.transport.stream,
                self.name,
                min=min(ids),
                max=max(ids),
                count=len(ids) + len(self._held) + 16,
                consumername=self.consumer,
            )
        except rexc.RedisError:
            return dict.fromkeys(ids, 2)
        wanted = set(ids)
        return {
            r["message_id"]: int(r["times_delivered"]) for r in rows if r["message_id"] in wanted
        }

    async def _heartbeat_loop(self) -> None:
        transport = self.transport
        interval = max(self.options.ack_wait / 3, 0.02)
        last_beat = last_lag = 0.0
        while not self._closed:
            await asyncio.sleep(min(interval, 0.5))
            try:
                held = list(self._held)
                if held and time.monotonic() - last_beat >= interval * 0.9:
                    last_beat = time.monotonic()
                    for start in range(0, len(held), 500):
                        await self.client.xclaim(
                            transport.stream,
                            self.name,
                            self.consumer,
                            0,
                            held[start : start + 500],
                            justid=True,
                        )
                if time.monotonic() - last_lag >= 1.0:
                    last_lag = time.monotonic()
                    await self._update_lag()
                    transport._link.connected()
            except asyncio.CancelledError:
                raise
            except rexc.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    transport._report(exc, f"subscription {self.name}: heartbeat")
            except Exception as exc:
                transport._report(exc, f"subscription {self.name}: heartbeat")

    async def _update_lag(self) -> None:
        for info in await self.client.xinfo_groups(self.transport.stream):
            if info.get("name") in (self.name, self.name.encode()):
                lag = info.get("lag")
                pending = int(info.get("pending") or 0)
                self.lag = None if lag is None else int(lag) + pending

    async def _ack_loop(self) -> None:
        backoff = self.transport._backoff()
        while not self._closed:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            try:
                await self._flush_acks()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.transport._report(exc, f"subscription {self.name}: ack")
                self._ack_wake.set()  # retry the kept ids after a pause
                await backoff.sleep()

    async def _flush_acks(self) -> None:
        while self._acks:
            ids, self._acks = self._acks, []
            try:
                await self.client.xack(self.transport.stream, self.name, *ids)
            except BaseException:
                self._acks[:0] = ids  # kept: sent again once the server is back
                raise
            self.transport._link.connected()
            self._held.difference_update(ids)

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self, timeout: float = 5.0) -> None:
        """Stop reading, finish (or abandon unacked) in-flight work, flush acks, leave the group.

        Messages not finished within ``timeout`` are NOT acked: they stay pending and another
        member claims them after ack_wait.
        """
        if self._closed:
            return
        self._closed = True
        await _stop(self._tasks[:1])
        left = await self._dispatcher.close(timeout)
        if left:
            log.warning(
                "subscription %s: %d message(s) unfinished at close; left pending for "
                "redelivery to another member",
                self.name,
                left,
            )
        self._ack_wake.set()  # lets the ack loop see _closed even if a cancel was swallowed
        await _stop(self._tasks[1:])
        try:
            await asyncio.wait_for(self._flush_acks(), max(timeout, 1.0))
            await self._leave()
        except Exception as exc:
            self.transport._report(exc, f"subscription {self.name}: close")
        self.transport._forget(self)

    async def _leave(self) -> None:
        client = self.client
        stream = self.transport.stream
        if self.group is None:
            # A broadcast group is private to this subscription and its name is random:
            # nobody can resume it, so drop it rather than let dead groups pile up.
            await client.xgroup_destroy(stream, self.name)
            return
        mine = await client.xpending_range(
            stream, self.name, min="-", max="+", count=1, consumername=self.consumer
        )
        if not mine:  # deleting a consumer drops its pending entries: only when it has none
            await client.xgroup_delconsumer(stream, self.name, self.consumer)
