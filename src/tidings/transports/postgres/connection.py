"""What every part of the PostgreSQL transport shares: its state, and running a statement on a
pooled connection with reconnects, error wording and connection-state reporting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from tidings.transport import TransportError, TransportStats
from tidings.transports.common import Backoff, ConnectionReporter, ErrorCallback
from tidings.transports.postgres.options import _Settings
from tidings.transports.postgres.queries import Statements

if TYPE_CHECKING:
    from tidings.transports.postgres.consumer import PostgresSubscription

log = logging.getLogger("tidings.transports.postgres")

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

_PIPELINE = psycopg.AsyncPipeline.is_supported()


def _pipeline(conn: Conn) -> contextlib.AbstractAsyncContextManager[Any]:
    """Pipeline mode (several statements, one round trip) where libpq has it (>= 14)."""
    return conn.pipeline() if _PIPELINE else contextlib.nullcontext()


class PostgresConnection:
    """The transport's state (set by ``PostgresTransport.__init__``) and its connection helpers,
    shared by the publishing and dead-letter parts."""

    _cfg: _Settings
    _raw_url: str
    _sql: Statements
    _on_error: ErrorCallback | None
    _pool: AsyncConnectionPool[Conn] | None
    _link: ConnectionReporter
    _subs: list[PostgresSubscription]
    stats: TransportStats
    _listener: asyncio.Task[None] | None
    _housekeeper: asyncio.Task[None] | None
    _started: bool
    _closing: bool

    def _require_started(self) -> None:
        if not self._started or self._pool is None:
            raise TransportError("PostgreSQL transport: call `await transport.start()` first")
        if self._closing:
            raise TransportError("PostgreSQL transport: the transport is closed")

    def _error(self, what: str, exc: BaseException) -> TransportError:
        detail = str(exc).strip().replace(self._raw_url, self._cfg.redacted) or type(exc).__name__
        return TransportError(
            f"PostgreSQL transport: {what} at {self._cfg.where} ({self._cfg.redacted}): {detail}"
        )

    def _report(self, where: str, exc: BaseException) -> None:
        """Background failures: remember, log and hand to ``on_error`` (never silent)."""
        self._link.report(exc, where, lost=isinstance(exc, psycopg.OperationalError))

    def _connected(self) -> None:
        if not self._closing:
            self._link.connected()

    async def _run(
        self, op: Callable[[Conn], Awaitable[T]], what: str, *, retry_for: float | None = None
    ) -> T:
        """Run ``op`` on a pooled connection; retry lost connections for reconnect_timeout.

        A statement that fails because its connection was dropped is retried on a fresh one
        (``op`` must be safe to repeat; publishes make sure with ``txid_status``).
        """
        pool = self._pool
        if pool is None:
            raise TransportError("PostgreSQL transport: call `await transport.start()` first")
        patience = self._cfg.reconnect_timeout if retry_for is None else retry_for
        deadline = time.monotonic() + patience
        attempt = 0
        backoff = Backoff(0.05, cap=1.0)
        while True:
            try:
                async with pool.connection() as conn:
                    result = await op(conn)
            except psycopg.OperationalError as exc:
                self._report(what, exc)
                attempt += 1
                if self._closing or time.monotonic() >= deadline:
                    raise self._error(f"{what} failed", exc) from exc
                if attempt == 1:
                    # A dropped server drops every idle connection too: test and discard
                    # them all at once instead of failing on each in turn.
                    with contextlib.suppress(Exception):
                        await pool.check()
                else:
                    await backoff.sleep()
                continue
            except psycopg.Error as exc:
                raise self._error(f"{what} failed", exc) from exc
            self._connected()
            return result
