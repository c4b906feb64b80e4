"""The PostgreSQL store's connections besides its pool: raw-JSON loading, the asyncio
connection cache behind the ``a``-methods, and the LISTEN thread that wakes subscriptions."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format

from tidings.store.base import SchemaMissing, StoreUnavailable
from tidings.store.postgres_queries import Q as _Q
from tidings.store.subscription import Wakeup
from tidings.urls import redact_url

__all__ = ["AsyncConn", "AsyncConnections", "Listener", "aconfigure", "configure"]

log = logging.getLogger("tidings.store.postgres")


class _RawJsonText(Loader):
    """Load json as its raw bytes: tidings decodes CloudEvents JSON itself (msgspec)."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


class _RawJsonBinary(_RawJsonText):
    format = Format.BINARY


def configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("json", _RawJsonText)
    conn.adapters.register_loader("json", _RawJsonBinary)


async def aconfigure(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("json", _RawJsonText)
    conn.adapters.register_loader("json", _RawJsonBinary)


class AsyncConnections:
    """Idle asyncio connections for the ``a``-methods, reused across calls.

    Deliberately not psycopg_pool's AsyncConnectionPool: its background tasks belong to one
    event loop and outlive a test's or a request's loop; this cache runs no task at all, so
    closing never needs the loop that opened a connection.
    """

    def __init__(self, url: str, where: str, connect_timeout: float, max_idle: int) -> None:
        self.url = url
        self.where = where
        self._connect_timeout = connect_timeout
        self._max_idle = max(1, max_idle)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        loop = asyncio.get_running_loop()
        with self._lock:
            if loop is not self._loop:  # a new event loop: do not reuse the old loop's sockets
                self._drop_idle()
                self._loop = loop
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self._connect_timeout))
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL at {self.where}: cannot connect: {exc}") from None
        await aconfigure(conn)
        return conn

    def put(self, conn: psycopg.AsyncConnection[Any], broken: bool) -> None:
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._lock:
            if not broken and idle and not conn.closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.pgconn.finish()

    def _drop_idle(self) -> None:
        for conn in self._idle:
            conn.pgconn.finish()  # closes the socket without needing an event loop
        self._idle.clear()

    def close(self) -> None:
        with self._lock:
            self._drop_idle()


class AsyncConn:
    """``async with`` an async connection, mapping connection trouble as the pool's does."""

    def __init__(self, cache: AsyncConnections) -> None:
        self._cache = cache
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        self._conn = await self._cache.get()
        return self._conn

    async def __aexit__(self, *exc_info: Any) -> None:
        exc = exc_info[1]
        broken = isinstance(exc, psycopg.OperationalError)
        if self._conn is not None:
            self._cache.put(self._conn, broken)
        if isinstance(exc, pg_errors.UndefinedTable):
            raise SchemaMissing(
                f"PostgreSQL at {self._cache.where}: the tidings schema is gone ({exc}); "
                f"run `tidings migrate {redact_url(self._cache.url)}`"
            ) from exc
        if broken:
            raise StoreUnavailable(
                f"PostgreSQL at {self._cache.where}: connection lost: {exc}"
            ) from exc


class Listener(threading.Thread):
    """The store's LISTEN connection: wakes subscriptions, survives a lost connection.

    Notifications are only wake-ups: those of the store's ``schema`` (the payload) wake
    ``wakeup``. While idle it runs ``SELECT 1`` every ``ping_interval`` so a silently dead
    connection is noticed; on any connection error it reconnects with backoff, LISTENs again and
    wakes every subscription, which then catches up from its position.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str,
        where: str,
        wakeup: Wakeup,
        connect_timeout: float,
        ping_interval: float,
    ) -> None:
        super().__init__(name=f"tidings-listen-{schema}", daemon=True)
        self._url = url
        self._schema = schema
        self._where = where
        self._wakeup = wakeup
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self.ready = threading.Event()
        self.backend_pid: int | None = None
        self.connects = 0
        self._stopping = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, round(self._connect_timeout)),
                ) as conn:
                    conn.execute(_Q.listen)
                    self.backend_pid = conn.info.backend_pid
                    self.connects += 1
                    if self.connects > 1:
                        log.warning(
                            "PostgreSQL %s: LISTEN connection re-established; catching up",
                            self._where,
                        )
                    self.ready.set()
                    self._wakeup.notify()  # (re)connected: catch up whatever was missed
                    backoff = 0.05
                    self._serve(conn)
            except Exception as exc:  # any failure: keep the store's wake-ups alive
                self.ready.clear()
                if self._stopping.is_set():
                    return
                log.warning(
                    "PostgreSQL %s: LISTEN connection lost (%s); reconnecting in %.2fs, "
                    "subscriptions poll meanwhile",
                    self._where,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    backoff,
                    exc_info=not isinstance(exc, psycopg.Error),
                )
                self._wakeup.notify()
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            woke = False
            for note in conn.notifies(timeout=0.2, stop_after=1):
                if note.payload in (self._schema, ""):
                    woke = True
            if woke:
                self._wakeup.notify()
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self._ping_interval:
                conn.execute(_Q.ping)  # raises on a dead connection
                idle_since = time.monotonic()
