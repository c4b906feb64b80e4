"""The PostgreSQL event store: production storage, LISTEN wake-ups, a position readers can trust.

``postgresql://user:pass@host:5432/db`` (``postgres://`` too). The schema comes from
``tidings migrate URL`` (or ``migrate=True``); the store refuses a database without it.

Writes: one transaction per ``append``. A stream's version lives in ``tidings_streams`` and is
bumped with ``UPDATE ... WHERE version = expected`` under that row's lock, so only writers of
the *same* stream wait for each other; a mismatch is a ConcurrencyError and nothing is written.
Batches go in with binary COPY after one round trip that reserves their positions and versions.

The gap problem: positions are drawn from a sequence at insert time but become visible at
commit, so a plain ``WHERE position > N`` reader can skip a lower position that commits late.
Reads stop at the *read horizon* (``postgres_horizon``): the last position whose writers, held
apart by a shared advisory lock (the fence, see 001_events.sql), have all ended. Shared locks
never block each other: writers stay fully concurrent, and a reader waits at most for the writes
that were already in flight when it started. ``txid`` (``pg_current_xact_id()``) is stored per
row as well, for external readers that page by ``(txid, position)`` with a
``pg_snapshot_xmin`` horizon.

Subscriptions: one LISTEN connection per store (channel ``tidings_events``, one payload-light
notification per transaction) wakes the shared polling engine of ``tidings.store.subscription``;
the listener is up before a subscription starts catching up, is pinged while idle, and after a
lost connection reconnects, listens again and wakes every subscription to catch up (see
``postgres_conns``). Polling every ``poll_interval`` remains the fallback, so a missed
notification only delays, never loses. The statements are the named queries of
``sql/postgres/queries.sql``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from tidings.event import Event
from tidings.migrations import MigrationError, postgres_pending
from tidings.retry import RetryPolicy
from tidings.store import AfterCommit, as_events, redact_url
from tidings.store import postgres_queries as pgq
from tidings.store.base import (
    ConcurrencyError,
    Criteria,
    DuplicateEvent,
    Recorded,
    SchemaMissing,
    StoreError,
    StoreSubscription,
    StoreUnavailable,
    check_criteria,
    check_page,
)
from tidings.store.migrate import connect, describe
from tidings.store.migrate import migrate as run_migrations
from tidings.store.postgres_conns import AsyncConn, AsyncConnections, Listener, configure
from tidings.store.postgres_horizon import ReadHorizon
from tidings.store.subscription import (
    DEFAULT_PAGE_SIZE,
    AlsoWrite,
    ErrorCallback,
    PageTxHandler,
    PollingSubscription,
    TxHandler,
    Wakeup,
)

__all__ = ["CHANNEL", "SEED_CHANNEL", "PostgresStore"]

log = logging.getLogger("tidings.store.postgres")
_Q = pgq.Q

_MAX_POSITION = 2**63 - 1
CHANNEL = "tidings_events"  # tidings' own wake-up: one per transaction, payload = schema name
SEED_CHANNEL = "new_event"  # seed 001's per-row JSON notification


class PostgresStore:
    """EventStore on PostgreSQL; see the module docstring for how order and wake-ups work.

    Options: ``publish`` (callable or bus, called after commit in commit order), ``migrate``
    (apply missing migrations on open instead of raising SchemaMissing), ``pool_size``,
    ``connect_timeout`` (seconds), ``poll_interval`` (subscription polling fallback),
    ``ping_interval`` (idle LISTEN connection check), ``horizon_wait`` (how long a read waits
    for in-flight writers before returning what is already final).
    """

    def __init__(
        self,
        url: str,
        *,
        publish: Callable[[Event], Any] | Any | None = None,
        migrate: bool = False,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        poll_interval: float = 1.0,
        ping_interval: float = 5.0,
        horizon_wait: float = 5.0,
    ) -> None:
        if not isinstance(url, str) or url.split("://", 1)[0].lower() not in (
            "postgresql",
            "postgres",
        ):
            shown = redact_url(url) if isinstance(url, str) else url
            raise StoreError(f"PostgresStore: expected a postgresql:// URL, got {shown!r}")
        self.url = url
        self._where_text = describe(url)
        self._connect_timeout = connect_timeout
        self._poll_interval = poll_interval
        self._ping_interval = ping_interval
        self._publisher = AfterCommit(publish)
        # With publish=, appends of this process go one at a time so that commit order, position
        # order and publish order agree (the contract promises publication in commit order).
        self._publish_lock = threading.Lock()
        self._wakeup = Wakeup()
        self._subscriptions: list[PollingSubscription] = []
        self._closed = False
        self._horizon = ReadHorizon(self._where_text, horizon_wait)
        self._listener: Listener | None = None
        self._listener_lock = threading.Lock()
        self._aconns = AsyncConnections(url, self._where_text, connect_timeout, max_idle=pool_size)

        with connect(url, connect_timeout=connect_timeout, autocommit=True) as conn:
            self.schema = str(conn.execute(_Q.current_schema).fetchone()[0])  # type: ignore[index]
            missing = self._missing_migrations(conn, url)
            if not missing:
                self._ensure_partitions(conn)
        if missing and migrate:
            applied = run_migrations(url, connect_timeout=connect_timeout)
            log.info("PostgreSQL %s: applied migrations %s", self._where_text, applied)
        elif missing:
            raise SchemaMissing(
                f"PostgreSQL at {self._where_text} (schema {self.schema!r}) has no tidings "
                f"schema or an old one (missing {', '.join(missing)}); run "
                f"`tidings migrate {redact_url(url)}` or open the store with migrate=True"
            )
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout))},
            configure=configure,
            open=False,
            name=f"tidings-store-{self._where_text}",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout + 1)
        except PoolTimeout:
            self._pool.close()
            raise StoreUnavailable(
                f"PostgreSQL at {self._where_text}: no connection within {connect_timeout}s"
            ) from None

    def _ensure_partitions(self, conn: psycopg.Connection[Any]) -> None:
        """Create the coming partitions of a partitioned events table (no-op on a plain one).

        Needs CREATE rights; an application role without them gets a warning, not a failure:
        the DEFAULT partition takes rows until an operator runs tidings_ensure_partitions().
        """
        try:
            created = [r[0] for r in conn.execute(_Q.ensure_partitions)]
        except psycopg.Error as exc:
            log.warning(
                "PostgreSQL %s: could not create upcoming event partitions (%s); rows go to "
                "events_default until tidings_ensure_partitions() runs",
                self._where_text,
                exc,
            )
            return
        if created:
            log.info("PostgreSQL %s: created partitions %s", self._where_text, created)

    @staticmethod
    def _missing_migrations(conn: psycopg.Connection[Any], url: str) -> list[str]:
        try:
            return [m.version for m in postgres_pending(conn, ("store",))]
        except MigrationError as exc:
            raise SchemaMissing(
                f"PostgreSQL at {describe(url)}: {exc}; point the URL's search_path at the "
                "schema that holds the tidings tables"
            ) from exc

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _conn(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; connection trouble becomes StoreUnavailable naming the server."""
        self._check_open()
        try:
            with self._pool.connection(timeout=self._connect_timeout) as conn:
                yield conn
        except PoolTimeout:
            raise StoreUnavailable(
                f"PostgreSQL at {self._where_text}: {what}: no connection available within "
                f"{self._connect_timeout}s (server down, or pool_size too small for the load)"
            ) from None
        except pg_errors.UndefinedTable as exc:
            raise SchemaMissing(
                f"PostgreSQL at {self._where_text}: {what}: the tidings schema is gone ({exc}); "
                f"run `tidings migrate {redact_url(self.url)}`"
            ) from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"PostgreSQL at {self._where_text}: {what} failed, connection lost: {exc}"
            ) from exc

    @property
    def connect_timeout(self) -> float:
        """Seconds to wait for a connection from the server or the pool."""
        return self._connect_timeout

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {redact_url(self.url)!r} is closed; open_store() it again")

    @staticmethod
    def _check_args(stream: str | None, expected_version: int | None) -> None:
        if expected_version is not None:
            if stream is None:
                raise ValueError("append(expected_version=...) needs a stream=")
            if expected_version < 0:
                raise ValueError(f"append: expected_version must be >= 0, got {expected_version}")

    def _duplicate(self, exc: psycopg.IntegrityError, batch: list[Event]) -> StoreError:
        detail = exc.diag.message_detail or ""
        ids = [e.id for e in batch]
        seen: set[str] = set()
        dupes = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
        culprit = dupes[0] if dupes else next((i for i in ids if f"({i})" in detail), None)
        if culprit is None and "(id)=" in detail:
            culprit = detail.split("(id)=(", 1)[1].rsplit(") already exists", 1)[0]
        if culprit is not None:
            return DuplicateEvent(culprit)
        return StoreError(
            f"PostgreSQL at {self._where_text}: append rejected: {exc}; nothing was written"
        )

    # ------------------------------------------------------------------ writes

    def append(
        self,
        events: Event | Sequence[Event],
        *,
        stream: str | None = None,
        expected_version: int | None = None,
        also: AlsoWrite | None = None,
    ) -> list[Recorded]:
        """Store ``events`` in one transaction: all or nothing; ConcurrencyError on a clash.

        ``also(conn, recorded)`` runs inside that transaction before the commit."""
        batch = as_events(events)
        self._check_args(stream, expected_version)
        rows = pgq.event_rows(batch, stream)
        self._check_open()
        if not batch:
            if expected_version is not None:
                actual = self.stream_version(stream)  # type: ignore[arg-type]
                if actual != expected_version:
                    raise ConcurrencyError(stream, expected_version, actual)  # type: ignore[arg-type]
            return []
        if self._publisher.active:
            with self._publish_lock:
                out = self._append(batch, rows, stream, expected_version, also)
                self._publisher.enqueue(batch)
        else:
            out = self._append(batch, rows, stream, expected_version, also)
        self._wakeup.notify()
        self._publisher.drain()
        return out

    def _append(
        self,
        batch: list[Event],
        rows: list[list[Any]],
        stream: str | None,
        expected: int | None,
        also: AlsoWrite | None = None,
    ) -> list[Recorded]:
        with self._conn("append") as conn:
            try:
                if len(rows) == 1 and also is None:
                    # one statement is one transaction in autocommit mode: no BEGIN/COMMIT trips;
                    # when the version does not match, tidings_reserve changes nothing
                    with conn.cursor() as cur:
                        cur.execute(*pgq.single_insert(rows[0], stream, expected))
                        one = cur.fetchone()
                        if one is None:
                            raise ConcurrencyError(
                                stream,  # type: ignore[arg-type]
                                expected,  # type: ignore[arg-type]
                                self._version(cur, stream),  # type: ignore[arg-type]
                            )
                    return [Recorded(one[0], batch[0], stream, one[1], one[2])]
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(_Q.reserve, (stream, expected, len(rows)))
                    ok, actual, first, positions, recorded_at = cur.fetchone()  # type: ignore[misc]
                    if not ok:
                        raise ConcurrencyError(stream, expected, actual)  # type: ignore[arg-type]
                    pgq.fill_rows(rows, positions, first)
                    with cur.copy(_Q.copy_events) as cp:
                        cp.set_types(pgq.COPY_TYPES)
                        for row in rows:
                            cp.write_row(row)
                    recorded = pgq.recorded(batch, rows, stream, recorded_at)
                    if also is not None:
                        also(conn, recorded)
            except psycopg.IntegrityError as exc:
                raise self._duplicate(exc, batch) from exc
        return recorded

    @staticmethod
    def _version(cur: psycopg.Cursor[Any], stream: str) -> int:
        row = cur.execute(_Q.stream_version, (stream,)).fetchone()
        return 0 if row is None else int(row[0])

    async def aappend(
        self,
        events: Event | Sequence[Event],
        *,
        stream: str | None = None,
        expected_version: int | None = None,
    ) -> list[Recorded]:
        batch = as_events(events)
        self._check_args(stream, expected_version)
        rows = pgq.event_rows(batch, stream)
        self._check_open()
        if not batch or self._publisher.active:
            # publish= keeps appends one at a time (commit order); the thread keeps the loop free
            return await asyncio.to_thread(
                self.append, batch, stream=stream, expected_version=expected_version
            )
        async with self._aconn() as conn:
            try:
                out = await self._aappend(conn, batch, rows, stream, expected_version)
            except psycopg.IntegrityError as exc:
                raise self._duplicate(exc, batch) from exc
        self._wakeup.notify()
        return out

    async def _aappend(
        self,
        conn: psycopg.AsyncConnection[Any],
        batch: list[Event],
        rows: list[list[Any]],
        stream: str | None,
        expected: int | None,
    ) -> list[Recorded]:
        cur = conn.cursor()
        if len(rows) == 1:  # one statement, one transaction (autocommit), as in _append
            await cur.execute(*pgq.single_insert(rows[0], stream, expected))
            one = await cur.fetchone()
            if one is None:
                await cur.execute(_Q.stream_version, (stream,))
                row = await cur.fetchone()
                actual = 0 if row is None else int(row[0])
                raise ConcurrencyError(stream, expected, actual)  # type: ignore[arg-type]
            return [Recorded(one[0], batch[0], stream, one[1], one[2])]
        async with conn.transaction():
            await cur.execute(_Q.reserve, (stream, expected, len(rows)))
            ok, actual, first, positions, at = await cur.fetchone()  # type: ignore[misc]
            if not ok:
                raise ConcurrencyError(stream, expected, actual)  # type: ignore[arg-type]
            pgq.fill_rows(rows, positions, first)
            async with cur.copy(_Q.copy_events) as cp:
                cp.set_types(pgq.COPY_TYPES)
                for r in rows:
                    await cp.write_row(r)
        return pgq.recorded(batch, rows, stream, at)

    # ------------------------------------------------------------------ reads

    def read_all(
        self, after_position: int = 0, limit: int = 1000, *, include_invalidated: bool = False
    ) -> list[Recorded]:
        check_page(after_position, limit)
        return self.load(
            Criteria(
                after_position=after_position, limit=limit, include_invalidated=include_invalidated
            )
        )

    async def aread_all(
        self, after_position: int = 0, limit: int = 1000, *, include_invalidated: bool = False
    ) -> list[Recorded]:
        check_page(after_position, limit)
        return await self.aload(
            Criteria(
                after_position=after_position, limit=limit, include_invalidated=include_invalidated
            )
        )

    def load(self, criteria: Criteria) -> list[Recorded]:
        """Events matching ``criteria`` in global order, never past the safe horizon."""
        check_criteria(criteria)
        with self._conn("load") as conn:
            horizon = self._horizon.read(conn)
            if horizon <= criteria.after_position:
                return []
            out: list[Recorded] = []
            after = criteria.after_position
            while True:
                sql, params, post = pgq.page_query(criteria, after, horizon)
                with conn.cursor(binary=True) as cur:
                    rows = cur.execute(sql, params).fetchall()
                if pgq.collect(rows, criteria, post, out):
                    return out
                after = rows[-1][0]

    async def aload(self, criteria: Criteria) -> list[Recorded]:
        check_criteria(criteria)
        async with self._aconn() as conn:
            horizon = await self._horizon.aread(conn)
            if horizon <= criteria.after_position:
                return []
            out: list[Recorded] = []
            after = criteria.after_position
            while True:
                sql, params, post = pgq.page_query(criteria, after, horizon)
                cur = conn.cursor(binary=True)
                await cur.execute(sql, params)
                rows = await cur.fetchall()
                if pgq.collect(rows, criteria, post, out):
                    return out
                after = rows[-1][0]

    def count(self, criteria: Criteria | None = None) -> int:
        """How many events ``criteria`` matches (limit ignored); replay uses it for progress."""
        criteria = criteria or Criteria()
        with self._conn("count") as conn:
            horizon = self._horizon.read(conn)
            query = pgq.count_query(criteria, horizon)
            if query is not None:
                row = conn.execute(*query).fetchone()
                return int(row[0]) if row else 0
        return len(self.load(pgq.unlimited(criteria)))

    def load_stream(self, stream: str, from_version: int = 1) -> list[Recorded]:
        """A stream's events from ``from_version``. Versions of one stream commit in order (the
        stream row lock), so this needs no horizon."""
        with self._conn("load_stream") as conn, conn.cursor(binary=True) as cur:
            rows = cur.execute(_Q.load_stream, (stream, from_version)).fetchall()
        return [pgq.record(r) for r in rows]

    async def aload_stream(self, stream: str, from_version: int = 1) -> list[Recorded]:
        async with self._aconn() as conn:
            cur = conn.cursor(binary=True)
            await cur.execute(_Q.load_stream, (stream, from_version))
            rows = await cur.fetchall()
        return [pgq.record(r) for r in rows]

    def stream_version(self, stream: str) -> int:
        with self._conn("stream_version") as conn, conn.cursor() as cur:
            return self._version(cur, stream)

    def head(self) -> int:
        with self._conn("head") as conn:
            row = conn.execute(_Q.head).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ chains

    def invalidate_chain(
        self, chain_id: int, after_block: int, before_position: int | None = None
    ) -> list[Recorded]:
        """Mark the events of ``chain_id`` above ``after_block`` invalidated (a reorg replaced
        their blocks); only those recorded before ``before_position`` when given, so the new
        branch's events already stored stay valid. Returns the events newly marked."""
        before = _MAX_POSITION if before_position is None else before_position
        with self._conn("invalidate_chain") as conn, conn.cursor(binary=True) as cur:
            rows = cur.execute(_Q.invalidate_chain, (chain_id, after_block, before)).fetchall()
        return sorted((pgq.record(r) for r in rows), key=lambda rec: rec.position)

    def chain_blocks(
        self, chain_id: int, first: int, last: int, before_position: int | None = None
    ) -> list[tuple[int, str | None]]:
        """The blocks ``(number, hash)`` of ``chain_id``'s valid events from ``first`` to
        ``last`` (recorded before ``before_position`` when given), in block order."""
        before = _MAX_POSITION if before_position is None else before_position
        with self._conn("chain_blocks") as conn:
            rows = conn.execute(_Q.chain_blocks, (chain_id, first, last, before)).fetchall()
        return [(int(r[0]), r[1]) for r in rows]

    # ------------------------------------------------------------------ asyncio plumbing

    def _aconn(self) -> AsyncConn:
        self._check_open()
        return AsyncConn(self._aconns)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(
        self,
        criteria: Criteria,
        handler: Callable[..., Any],
        *,
        name: str,
        retry: RetryPolicy | None = None,
        on_error: ErrorCallback | None = None,
        transactional: bool = False,
        batch: bool = False,
        poll_interval: float | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> PollingSubscription:
        """Catch up from ``name``'s checkpoint, then follow live (LISTEN, polling as fallback).

        With ``transactional=True`` the handler gets ``(recorded, connection)``: a psycopg
        ``Connection`` inside an open transaction that also moves the checkpoint. Write your
        effects through it and do not commit; both commit together or roll back together.
        ``batch=True`` hands it a list of events (a page) instead of one.
        """
        self._check_open()
        listener = self._ensure_listener()
        if not listener.ready.wait(self._connect_timeout):
            log.warning(
                "PostgreSQL %s: LISTEN is not up yet; subscription %r polls every %.2fs meanwhile",
                self._where_text,
                name,
                self._poll_interval if poll_interval is None else poll_interval,
            )
        sub = PollingSubscription(
            self,
            criteria,
            handler,
            name=name,
            wakeup=self._wakeup,
            retry=retry,
            on_error=on_error,
            transactional=transactional,
            batch=batch,
            poll_interval=self._poll_interval if poll_interval is None else poll_interval,
            page_size=page_size,
        )
        self._subscriptions.append(sub)
        return sub

    def _ensure_listener(self) -> Listener:
        with self._listener_lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = Listener(
                    self.url,
                    schema=self.schema,
                    where=self._where_text,
                    wakeup=self._wakeup,
                    connect_timeout=self._connect_timeout,
                    ping_interval=self._ping_interval,
                )
                self._listener.start()
            return self._listener

    @property
    def listener(self) -> Listener | None:
        """The LISTEN thread (``backend_pid``, ``connects``), for health checks and tests."""
        return self._listener

    def subscriptions(self) -> list[StoreSubscription]:
        return list(self._subscriptions)

    def checkpoint(self, name: str) -> int:
        with self._conn("checkpoint") as conn:
            row = conn.execute(_Q.checkpoint, (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def save_checkpoint(self, name: str, position: int) -> None:
        with self._conn("save_checkpoint") as conn:
            conn.execute(_Q.save_checkpoint, (name, position))

    def reset_subscription(self, name: str, position: int = 0) -> None:
        """Move ``name``'s checkpoint; stop a running subscription of that name first."""
        if position < 0:
            raise ValueError(f"reset_subscription: position must be >= 0, got {position}")
        self.save_checkpoint(name, position)

    def handle_in_transaction(self, name: str, rec: Recorded, handler: TxHandler) -> None:
        """Run ``handler(rec, conn)`` and move the checkpoint in one transaction.

        The checkpoint row is locked first: a second instance of the same subscription waits,
        then sees the position already done and skips it, so effects happen exactly once.
        """
        with self._conn("transactional handler") as conn, conn.transaction():
            if self._lock_checkpoint(conn, name) >= rec.position:
                return
            handler(rec, conn)
            self._move_checkpoint(conn, name, rec.position)

    def handle_page_in_transaction(
        self, name: str, page: list[Recorded], handler: PageTxHandler
    ) -> None:
        """``handle_in_transaction`` for a page: one transaction, the same checkpoint lock."""
        with self._conn("transactional handler") as conn, conn.transaction():
            done = self._lock_checkpoint(conn, name)
            todo = [rec for rec in page if rec.position > done]
            if not todo:
                return
            handler(todo, conn)
            self._move_checkpoint(conn, name, todo[-1].position)

    @staticmethod
    def _lock_checkpoint(conn: psycopg.Connection[Any], name: str) -> int:
        conn.execute(_Q.add_checkpoint, (name,))
        row = conn.execute(_Q.lock_checkpoint, (name,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _move_checkpoint(conn: psycopg.Connection[Any], name: str, position: int) -> None:
        conn.execute(_Q.move_checkpoint, (position, name))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop subscriptions (saving checkpoints), the listener, then the pools."""
        if self._closed:
            return
        for sub in self._subscriptions:
            sub.stop()
        self._subscriptions.clear()
        self._closed = True
        if self._listener is not None:
            self._listener.stop()
        self._pool.close()
        self._aconns.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        return f"<PostgresStore {self._where_text} schema={getattr(self, 'schema', '?')}>"
