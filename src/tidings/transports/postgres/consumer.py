"""A PostgreSQL transport subscription: leased claims, the shared Dispatcher, batched acks."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING

import psycopg

from tidings.event import Event, EventError, decode
from tidings.transport import AsyncHandler, DeadMessage, Inbound, SubscribeOptions
from tidings.transports.common import Backoff
from tidings.transports.dispatch import Dispatcher, DispatchStats
from tidings.transports.postgres.connection import Conn, _pipeline, log

if TYPE_CHECKING:
    from tidings.transports.postgres.transport import PostgresTransport


class PostgresSubscription:
    """One consumer: claims leased batches, hands them to the shared Dispatcher, acks in bulk."""

    def __init__(
        self,
        transport: PostgresTransport,
        name: str,
        pattern: str,
        options: SubscribeOptions,
        handler: AsyncHandler,
    ) -> None:
        self.name = name
        self.pattern = pattern
        self.group = options.group
        self.options = options
        self.lag: int | None = None
        self._t = transport
        self._owner = f"{transport.application_name}-{uuid.uuid4().hex[:8]}"
        self._unsettled: set[int] = set()  # claimed, handler not finished
        self._held: set[int] = set()  # claimed, row not yet deleted or handed back
        self._acks: list[int] = []
        self._wake = asyncio.Event()
        self._capacity = asyncio.Event()
        self._ack_ready = asyncio.Event()
        self._stopping = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self.dispatcher = Dispatcher(
            name, handler, options, self._write_dead_letter, on_error=transport._on_error
        )

    @property
    def stats(self) -> DispatchStats:
        """The dispatcher's counters: received, handled, retried, dead, undecodable, ..."""
        return self.dispatcher.stats

    def _is_stopping(self) -> bool:
        return self._stopping

    def _start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._consume()),
            asyncio.create_task(self._flush_loop()),
            asyncio.create_task(self._heartbeat()),
        ]

    async def _write_dead_letter(self, dead: DeadMessage) -> None:
        key = None
        with contextlib.suppress(Exception):
            ev = dead.event()
            key = ev.key if ev is not None else None
        await self._t._write_dead_letter(dead, key)

    # ---------------------------------------------------------------- consume

    async def _consume(self) -> None:
        t, sql = self._t, self._t._sql
        # Claim up to one batch ahead of the handlers (prefetch), so the next claim's round
        # trip overlaps the current batch's handling; the Dispatcher still bounds how many
        # handlers run at once.
        ahead = min(self.options.max_in_flight, t._cfg.batch_size)
        cap = self.options.max_in_flight + ahead
        min_claim = max(1, ahead // 4)
        backoff = Backoff(0.05, cap=2.0)
        while not self._stopping:
            free = cap - len(self._unsettled)
            if free < min_claim:
                # Let a few finish so claims stay batches, not one row per round trip.
                self._capacity.clear()
                await self._capacity.wait()
                for _ in range(3):
                    await asyncio.sleep(0)
                continue
            self._wake.clear()
            limit = min(free, t._cfg.batch_size)
            try:
                rows = await self._claim(limit)
            except Exception as exc:
                if self._is_stopping():
                    return
                t._report(f"claim for {self.name}", exc)
                await backoff.sleep()
                continue
            backoff.reset()
            if rows:
                rows.sort()
                for mid, attempts, body in rows:
                    if mid in self._unsettled:
                        continue  # our own lease lapsed and we claimed it again; still running
                    await self.dispatcher.submit(self._inbound(mid, attempts, bytes(body)))
                continue
            wait = t._cfg.poll_interval
            try:
                async with t._pool.connection() as conn:  # type: ignore[union-attr]
                    cur = await conn.execute(sql.next_expiry, (self.name, self._owner))
                    row = await cur.fetchone()
                if row and row[0] is not None:
                    wait = min(wait, max(float(row[0]), 0.0) + 0.01)
            except psycopg.Error:
                pass  # the next claim reports it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _claim(self, limit: int) -> list[tuple[int, int, bytes]]:
        t, sql = self._t, self._t._sql
        params = {
            "sub": self.name,
            "limit": limit,
            "lease": self.options.ack_wait,
            "owner": self._owner,
        }

        async def run(conn: Conn) -> list[tuple[int, int, bytes]]:
            # Pipelined: BEGIN, lock, claim and COMMIT travel in one network round trip.
            async with _pipeline(conn), conn.transaction():
                # One claimer per subscription at a time: SKIP LOCKED alone cannot see that a
                # concurrent claimer just took an earlier message of the same key.
                await conn.execute(sql.claim_lock, (t._cfg.schema, self.name))
                cur = await conn.execute(sql.claim, params, binary=True)
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

        rows = await t._run(run, "claim", retry_for=1.0)
        for mid, _, _ in rows:
            self._held.add(mid)
        return rows

    def _inbound(self, mid: int, attempts: int, body: bytes) -> Inbound:
        try:
            event: Event | None = decode(body)
            error = None
        except EventError as exc:
            event, error = None, str(exc)
        except Exception as exc:  # a body that is not even text
            event, error = None, f"{type(exc).__name__}: {exc}"
        self._unsettled.add(mid)

        async def ack() -> None:
            if mid in self._unsettled:
                self._unsettled.discard(mid)
                self._acks.append(mid)
                self._ack_ready.set()
                self._capacity.set()

        async def nack() -> None:
            self._unsettled.discard(mid)
            self._capacity.set()
            await self._hand_back([mid])

        return Inbound(
            raw=body,
            event=event,
            ack=ack,
            nack=nack,
            delivery_count=attempts,
            decode_error=error,
        )

    async def _hand_back(self, ids: list[int]) -> None:
        """Nack: clear our lease so any member may claim the messages at once."""
        t = self._t
        for mid in ids:
            self._held.discard(mid)

        async def run(conn: Conn) -> None:
            await conn.execute(t._sql.nack, {"sub": self.name, "owner": self._owner, "ids": ids})

        await t._run(run, "nack", retry_for=0)
        self._wake.set()

    # ---------------------------------------------------------------- acks and leases

    async def _flush_loop(self) -> None:
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            try:
                await self._flush()
            except Exception as exc:
                self._t._report(f"ack for {self.name}", exc)
                self._ack_ready.set()
                await asyncio.sleep(0.2)

    async def _flush(self) -> None:
        """Delete acked rows in one statement; on failure they stay queued for the next try."""
        if not self._acks:
            return
        ids, self._acks = self._acks, []
        t = self._t

        async def run(conn: Conn) -> None:
            async with _pipeline(conn), conn.transaction():
                await conn.execute(t._sql.async_commit)
                await conn.execute(t._sql.ack, (self.name, ids))

        try:
            await t._run(run, "ack", retry_for=1.0)
        except BaseException:
            self._acks[:0] = ids
            raise
        self._held.difference_update(ids)
        self._wake.set()  # the keys of these messages are free again

    async def _heartbeat(self) -> None:
        """Renew leases of work in progress, refresh last_seen and the lag figure."""
        t, sql = self._t, self._t._sql
        renew_every = max(0.05, min(self.options.ack_wait / 3, 5.0))
        tick = min(renew_every, 1.0)
        last_renew = last_touch = last_lag = time.monotonic()
        lag_every = 0.99
        while True:
            await asyncio.sleep(tick)
            try:
                now = time.monotonic()
                held = list(self._held) if now - last_renew >= renew_every * 0.99 else []
                async with t._pool.connection() as conn:  # type: ignore[union-attr]
                    if held:
                        await conn.execute(
                            sql.renew, (self.options.ack_wait, self.name, self._owner, held)
                        )
                        last_renew = now
                    if now - last_touch >= 30.0:
                        await conn.execute(sql.touch, (self.name,))
                        last_touch = now
                    if now - last_lag >= lag_every:
                        cur = await conn.execute(sql.lag, (self.name,))
                        row = await cur.fetchone()
                        self.lag = int(row[0]) if row else None
                        last_lag = time.monotonic()
                        # count(*) grows with the backlog: keep it under ~2% of the time.
                        lag_every = max(0.99, 50 * (last_lag - now))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                t._report(f"lease renewal for {self.name}", exc)

    # ---------------------------------------------------------------- close

    async def close(self, timeout: float = 5.0) -> None:
        """Stop claiming, let in-flight handlers finish within ``timeout``, hand back the rest.

        Nothing unfinished is acked: it is released (or its lease runs out) and another
        member gets it. A broadcast subscription is removed with its backlog; a group stays.
        """
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._wake.set()
        self._capacity.set()
        consumer, flusher, heartbeat = self._tasks
        try:
            await asyncio.wait_for(asyncio.shield(consumer), min(timeout, 1.0))
        except (TimeoutError, Exception):
            consumer.cancel()
            with contextlib.suppress(BaseException):
                await consumer
        left = await self.dispatcher.close(timeout)
        if left:
            log.warning(
                "subscription %s: %d message(s) unfinished at close, handed back", self.name, left
            )
        flusher.cancel()
        heartbeat.cancel()
        for task in (flusher, heartbeat):
            with contextlib.suppress(BaseException):
                await task
        try:
            await self._flush()
            pending_acks = set(self._acks)
            unfinished = [m for m in self._held if m not in pending_acks]
            if unfinished:
                await self._hand_back(unfinished)
            if self.group is None:
                await self._drop()
        except Exception as exc:
            # Leases run out by themselves; a broadcast row expires after broadcast_ttl.
            self._t._report(f"close of {self.name}", exc)
        if self in self._t._subs:
            self._t._subs.remove(self)

    async def _drop(self) -> None:
        t = self._t

        async def run(conn: Conn) -> None:
            async with conn.transaction():
                await conn.execute(t._sql.drop_subscription, (self.name,))
                await conn.execute(t._sql.drop_subscription_deliveries, (self.name,))

        await t._run(run, "unsubscribe", retry_for=0)
