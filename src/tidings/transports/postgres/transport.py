"""The PostgreSQL transport: options, lifecycle (tables, pool), subscribing, the LISTEN loop,
housekeeping and health. Publishing and dead letters are the mixins it is built from."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from tidings.migrations import MigrationError, postgres_apply
from tidings.topics import compile_pattern
from tidings.transport import (
    AsyncHandler,
    Capabilities,
    SubscribeOptions,
    TransportError,
    TransportHealth,
    TransportState,
    TransportStats,
    TransportSubscription,
    subscription_name,
)
from tidings.transports.common import Backoff, ConnectionReporter, ErrorCallback
from tidings.transports.postgres.connection import Conn, log
from tidings.transports.postgres.consumer import PostgresSubscription
from tidings.transports.postgres.dead_letters import PostgresDeadLetters
from tidings.transports.postgres.options import _parse
from tidings.transports.postgres.patterns import glob_to_regex
from tidings.transports.postgres.publish import PostgresPublisher, _Row, _settle
from tidings.transports.postgres.queries import statements

_CAPABILITIES = Capabilities(
    ordering=True, persistent=True, consumer_groups=True, replay=True, redelivery=True
)


class PostgresTransport(PostgresPublisher, PostgresDeadLetters):
    """A Transport over PostgreSQL tables (see the module docstring for the design).

    URL: ``postgresql://user:pass@host:5432/db?schema=tidings_queue&poll_interval=1.0``; the
    options below may also be passed as keyword arguments (keywords win). Other query
    parameters (``sslmode``, ``application_name``, ...) go to libpq unchanged.

    - ``schema``: where the queue tables live (created on ``start``).
    - ``channel``: the LISTEN/NOTIFY channel (default ``tidings_q_<schema>``); every process
      of one queue must use the same one.
    - ``poll_interval``: seconds between polls when no NOTIFY arrives (the fallback).
    - ``batch_size``: most messages one claim takes.
    - ``retention``: seconds a fully acked message is kept for ``start="earliest"``
      subscribers; ``0`` keeps them forever.
    - ``housekeeping_interval``: how often retention and stale-subscriber cleanup run.
    - ``broadcast_ttl``: a broadcast subscriber not seen for this long (crashed without
      ``close``) is removed with its backlog; groups are durable and never expire.
    - ``pool_size``, ``connect_timeout``, ``reconnect_timeout``: connection handling; a
      publish keeps retrying a lost connection for ``reconnect_timeout`` seconds.
    - ``on_error``: callable given every error a background task meets (also logged).
    """

    capabilities = _CAPABILITIES

    def __init__(self, url: str, *, on_error: ErrorCallback | None = None, **options: Any) -> None:
        self._cfg = _parse(url, options)
        self._raw_url = url
        self.url = self._cfg.redacted  # public and printable: the password shows as ***
        self._sql = statements(self._cfg.schema, self._cfg.channel)
        self._on_error = on_error
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._link = ConnectionReporter(
            log,
            "postgres transport",
            self._cfg.where,
            on_error=on_error,
            state=TransportState.CLOSED,
            render=str,
        )
        self._subs: list[PostgresSubscription] = []
        self.stats = TransportStats()  # read by exporters
        self._listener: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._outbox: list[tuple[_Row, asyncio.Future[None]]] = []
        self._publisher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def application_name(self) -> str:
        """The ``application_name`` of every connection this transport opens."""
        return self._cfg.application_name

    async def start(self) -> None:
        if self._started:
            return
        self._link.state = TransportState.CONNECTING
        try:
            conn = await asyncio.to_thread(self._connect_sync)
        except psycopg.Error as exc:
            self._link.state = TransportState.DISCONNECTED
            raise self._error("cannot connect", exc) from None
        try:
            await asyncio.to_thread(self._migrate, conn)
        except (psycopg.Error, MigrationError) as exc:
            self._link.state = TransportState.DISCONNECTED
            raise self._error(
                f"cannot create the queue tables in schema {self._cfg.schema!r}", exc
            ) from None
        self._pool = AsyncConnectionPool(
            self._cfg.conninfo,
            kwargs={"autocommit": True},
            min_size=1,
            max_size=self._cfg.pool_size,
            open=False,
            timeout=self._cfg.reconnect_timeout,
            reconnect_timeout=self._cfg.reconnect_timeout,
            name=self._cfg.application_name,
        )
        try:
            await self._pool.open(wait=True, timeout=self._cfg.connect_timeout)
        except psycopg.Error as exc:
            await self._pool.close()
            self._link.state = TransportState.DISCONNECTED
            raise self._error("cannot open the connection pool", exc) from None
        self._started = True
        self._link.state = TransportState.CONNECTED
        self._housekeeper = asyncio.create_task(self._housekeeping_loop())

    def _connect_sync(self) -> psycopg.Connection[Any]:
        timeout = max(1, round(self._cfg.connect_timeout))
        return psycopg.connect(self._cfg.conninfo, autocommit=True, connect_timeout=timeout)

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Create or update the queue tables: migration component ``transport_postgres``,
        recorded in the schema itself (see tidings.migrations); up to date costs two reads."""
        with conn:
            postgres_apply(conn, ("transport_postgres",), schema=self._cfg.schema)

    async def close(self, timeout: float = 5.0) -> None:
        if self._closing:
            return
        self._closing = True
        subs = list(self._subs)
        if subs:
            await asyncio.gather(*(s.close(timeout) for s in subs), return_exceptions=True)
        if self._publisher is not None and not self._publisher.done():
            # Publishes already called get their chance to commit before the pool goes.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._publisher), timeout)
        for task in (self._publisher, self._listener, self._housekeeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for _, fut in self._outbox:
            _settle(fut, TransportError("PostgreSQL transport closed before the publish"))
        self._outbox.clear()
        if self._pool is not None:
            await self._pool.close(timeout=timeout)
        self._link.state = TransportState.CLOSED

    # ------------------------------------------------------------------ subscribe

    async def subscribe(
        self,
        pattern: str,
        handler: AsyncHandler,
        options: SubscribeOptions | None = None,
    ) -> PostgresSubscription:
        compiled = compile_pattern(pattern)  # PatternError before anything touches the server
        opts = options or SubscribeOptions()
        self._require_started()
        name = subscription_name(pattern, opts.group)
        regex = glob_to_regex(compiled)

        async def register(conn: Conn) -> bool:
            cur = await conn.execute(self._sql.register, (name, pattern, regex, opts.group))
            row = await cur.fetchone()
            return bool(row and row[0])

        created = await self._run(register, "subscribe")
        if created and opts.start == "earliest":

            async def backfill(conn: Conn) -> None:
                async with conn.transaction():
                    await conn.execute(self._sql.backfill_lock)
                    await conn.execute(self._sql.backfill, (name, regex))

            await self._run(backfill, "subscribe (backfill)")
        sub = PostgresSubscription(self, name, pattern, opts, handler)
        self._subs.append(sub)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen_loop())
        sub._start()
        return sub

    # ------------------------------------------------------------------ health

    async def ping(self) -> float:
        self._require_started()
        t0 = time.perf_counter()

        async def run(conn: Conn) -> None:
            await conn.execute(self._sql.ping)

        await self._run(run, "ping", retry_for=self._cfg.connect_timeout)
        return time.perf_counter() - t0

    def subscriptions(self) -> list[TransportSubscription]:
        return list(self._subs)

    def health(self) -> TransportHealth:
        lags = {s.name: s.lag for s in self._subs if s.lag is not None}
        return TransportHealth(
            state=self._link.state,
            last_error=self._link.last_error,
            lag=sum(lags.values()) if lags else (0 if self._subs else None),
            detail={
                "server": self._cfg.where,
                "schema": self._cfg.schema,
                "application_name": self._cfg.application_name,
                "subscriptions": lags,
                "listening": self._listener is not None and not self._listener.done(),
            },
        )

    async def purge(self) -> int:
        """Run retention now: delete fully acked messages older than ``retention``."""
        if self._cfg.retention is None:
            return 0
        retention = self._cfg.retention

        async def run(conn: Conn) -> int:
            total = 0
            while True:
                cur = await conn.execute(self._sql.retention, (retention,))
                total += cur.rowcount
                if cur.rowcount < 10000:
                    return total

        return await self._run(run, "retention")

    async def _listen_loop(self) -> None:
        """LISTEN on the schema's channel; on any loss reconnect, re-LISTEN and wake everyone."""
        backoff = Backoff(0.1, cap=2.0)
        while not self._closing:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._cfg.conninfo,
                    autocommit=True,
                    connect_timeout=max(1, round(self._cfg.connect_timeout)),
                )
                async with conn:
                    await conn.execute(self._sql.listen)
                    backoff.reset()
                    self._connected()
                    self._wake_all()  # anything published while we were away
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._is_closing():
                    return
                self._report("listen", exc)
                self._wake_all()
                await backoff.sleep()

    def _is_closing(self) -> bool:
        return self._closing

    def _wake(self, payload: str) -> None:
        """Wake the subscriptions a NOTIFY names (all of them for an empty payload)."""
        if not payload:
            self._wake_all()
            return
        names = set(payload.split(","))
        for sub in self._subs:
            if sub.name in names:
                sub._wake.set()

    def _wake_all(self) -> None:
        for sub in self._subs:
            sub._wake.set()

    async def _housekeeping_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._cfg.housekeeping_interval)
            try:
                await self._housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._report("housekeeping", exc)

    async def _housekeeping(self) -> None:
        """Retention and removal of crashed broadcast subscribers; one process at a time."""
        ttl = self._cfg.broadcast_ttl

        async def run(conn: Conn) -> None:
            async with conn.transaction():
                cur = await conn.execute(self._sql.housekeeping_lock, [self._cfg.schema])
                row = await cur.fetchone()
                if not row or not row[0]:
                    return
                cur = await conn.execute(self._sql.expire_broadcast, (ttl,))
                gone = [r[0] for r in await cur.fetchall()]
                if gone:
                    log.warning("removed %d stale broadcast subscription(s): %s", len(gone), gone)
                    await conn.execute(self._sql.drop_deliveries, (gone,))

        await self._run(run, "housekeeping", retry_for=0)
        await self.purge()
