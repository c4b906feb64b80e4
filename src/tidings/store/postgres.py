"""The PostgreSQL event store: production storage, LISTEN wake-ups, a position readers can trust.

``postgresql://user:pass@host:5432/db`` (``postgres://`` too). The schema comes from
``tidings migrate URL`` (or ``migrate=True``); the store refuses a database without it.

Writes: one transaction per ``append``. A stream's version lives in ``tidings_streams`` and is
bumped with ``UPDATE ... WHERE version = expected`` under that row's lock, so only writers of
the *same* stream wait for each other; a mismatch is a ConcurrencyError and nothing is written.
Batches go in with binary COPY after one round trip that reserves their positions and versions.

The gap problem: positions are drawn from a sequence at insert time but become visible at
commit, so a plain ``WHERE position > N`` reader can skip a lower position that commits late.
Every inserting transaction holds a shared advisory lock (the *fence*, see 001_events.sql) from
before it draws a position until it ends. A reader reads the sequence's last value L, then the
list of fence holders; when those have ended, every position <= L is final (committed and
visible, or rolled back for good), so reads return rows up to L only. Shared locks never block
each other: writers stay fully concurrent, and a reader waits at most for the writes that were
already in flight when it started. ``txid`` (``pg_current_xact_id()``) is stored per row as well,
for external readers that page by ``(txid, position)`` with a ``pg_snapshot_xmin`` horizon.

Subscriptions: one LISTEN connection per store (channel ``tidings_events``, one payload-light
notification per transaction) wakes the shared polling engine of ``tidings.store.subscription``;
the listener is up before a subscription starts catching up, is pinged while idle, and after a
lost connection reconnects, listens again and wakes every subscription to catch up. Polling every
``poll_interval`` remains the fallback, so a missed notification only delays, never loses.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format
from psycopg_pool import ConnectionPool, PoolTimeout

from tidings.event import Event, decode, encode
from tidings.migrations import MigrationError, postgres_pending
from tidings.retry import RetryPolicy
from tidings.store import AfterCommit, as_events, redact_url
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

CHANNEL = "tidings_events"  # tidings' own wake-up: one per transaction, payload = schema name
SEED_CHANNEL = "new_event"  # seed 001's per-row JSON notification

_COLUMNS = "position, stream, version, recorded_at, payload"
_INSERT_COLUMNS = (
    "position, id, type, source, stream, version, time, subject, correlation_id, "
    "causation_id, aggregate_id, aggregate_type, payload"
)
_COPY_TYPES = [
    "int8", "text", "text", "text", "text", "int8", "timestamptz",
    "text", "text", "text", "text", "text", "bytea",
]  # fmt: skip
# payload goes as bytea in binary COPY: json's binary input is its UTF-8 text, byte for byte
_RESERVE = (
    "SELECT ok, actual, first_version, positions, recorded_at FROM tidings_reserve(%s, %s, %s)"
)
_INSERT_ONE = (
    f"INSERT INTO events ({_INSERT_COLUMNS}) "
    "SELECT r.positions[1], %s, %s, %s, %s, r.first_version, %s, %s, %s, %s, %s, %s, "
    "convert_from(%s::bytea, 'UTF8')::json "
    "FROM tidings_reserve(%s, %s, 1) r WHERE r.ok "
    "RETURNING position, version, recorded_at"
)
# no stream: a plain INSERT (the fence trigger runs before the position default is drawn)
_INSERT_PLAIN = (
    f"INSERT INTO events ({_INSERT_COLUMNS.removeprefix('position, ')}) "
    "VALUES (%s, %s, %s, NULL, NULL, %s, %s, %s, %s, %s, %s, "
    "convert_from(%s::bytea, 'UTF8')::json) "
    "RETURNING position, version, recorded_at"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO tidings_checkpoints (name, position) VALUES (%s, %s) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()"
)


class _RawJsonText(Loader):
    """Load json as its raw bytes: tidings decodes CloudEvents JSON itself (msgspec)."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


class _RawJsonBinary(_RawJsonText):
    format = Format.BINARY


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("json", _RawJsonText)
    conn.adapters.register_loader("json", _RawJsonBinary)


async def _aconfigure(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("json", _RawJsonText)
    conn.adapters.register_loader("json", _RawJsonBinary)


def _record(row: tuple[Any, ...]) -> Recorded:
    return Recorded(row[0], decode(row[4]), row[1], row[2], row[3])


def _like_prefix(pattern: str) -> str | None:
    """A LIKE prefix that every name matching the glob ``pattern`` starts with (None: any)."""
    literal = pattern.split("*", 1)[0]
    if not literal:
        return None
    escaped = literal.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _where(criteria: Criteria, horizon: int) -> tuple[str, list[Any], bool]:
    """SQL conditions for ``criteria`` up to ``horizon``; the flag says "filter in Python too"."""
    where = ["position > %s", "position <= %s"]
    params: list[Any] = [criteria.after_position, horizon]
    exact = criteria.exact_types
    post_filter = False
    if criteria.types:
        if exact is not None:
            where.append("type = ANY(%s)")
            params.append(list(exact))
        else:
            post_filter = True
            prefixes = [_like_prefix(t) for t in criteria.types]
            if all(p is not None for p in prefixes):
                where.append("(" + " OR ".join(["type LIKE %s"] * len(prefixes)) + ")")
                params += prefixes
    if criteria.since is not None:
        where.append("time >= %s")
        params.append(criteria.since)
    if criteria.until is not None:
        where.append("time < %s")
        params.append(criteria.until)
    for column in ("correlation_id", "aggregate_id", "stream"):
        value = getattr(criteria, column)
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    return " AND ".join(where), params, post_filter


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
        self._horizon_wait = horizon_wait
        self._publisher = AfterCommit(publish)
        # With publish=, appends of this process go one at a time so that commit order, position
        # order and publish order agree (the contract promises publication in commit order).
        self._publish_lock = threading.Lock()
        self._wakeup = Wakeup()
        self._subscriptions: list[PollingSubscription] = []
        self._closed = False
        self._safe = 0  # every position <= _safe is final (monotonic, shared by all readers)
        self._safe_lock = threading.Lock()
        self._stuck: frozenset[str] = frozenset()  # writers a read already gave up waiting for
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._aconns = _AsyncConnections(self, max_idle=pool_size)

        with connect(url, connect_timeout=connect_timeout, autocommit=True) as conn:
            self.schema = str(conn.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
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
            configure=_configure,
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
            created = [r[0] for r in conn.execute("SELECT tidings_ensure_partitions()")]
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
    def _rows(batch: list[Event], stream: str | None) -> list[list[Any]]:
        # encode() raises EventError for an unencodable event: before anything is written
        return [
            [
                None,
                e.id,
                e.type,
                e.source,
                stream,
                None,
                e.time,
                e.subject,
                e.correlation_id,
                e.causation_id,
                e.aggregate_id,
                e.aggregate_type,
                encode(e),
            ]
            for e in batch
        ]

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
        rows = self._rows(batch, stream)
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
                        cur.execute(*self._single(rows[0], stream, expected))
                        one = cur.fetchone()
                        if one is None:
                            raise ConcurrencyError(
                                stream,  # type: ignore[arg-type]
                                expected,  # type: ignore[arg-type]
                                self._version(cur, stream),  # type: ignore[arg-type]
                            )
                    return [Recorded(one[0], batch[0], stream, one[1], one[2])]
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(_RESERVE, (stream, expected, len(rows)))
                    ok, actual, first, positions, recorded_at = cur.fetchone()  # type: ignore[misc]
                    if not ok:
                        raise ConcurrencyError(stream, expected, actual)  # type: ignore[arg-type]
                    self._fill(rows, positions, first)
                    with cur.copy(
                        f"COPY events ({_INSERT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
                    ) as cp:
                        cp.set_types(_COPY_TYPES)
                        for row in rows:
                            cp.write_row(row)
                    recorded = self._recorded(batch, rows, stream, recorded_at)
                    if also is not None:
                        also(conn, recorded)
            except psycopg.IntegrityError as exc:
                raise self._duplicate(exc, batch) from exc
        return recorded

    @staticmethod
    def _single(
        row: list[Any], stream: str | None, expected: int | None
    ) -> tuple[LiteralString, list[Any]]:
        if stream is None:
            return _INSERT_PLAIN, [*row[1:4], *row[6:]]
        return _INSERT_ONE, [*row[1:5], *row[6:], stream, expected]

    @staticmethod
    def _fill(rows: list[list[Any]], positions: list[int], first: int | None) -> None:
        for i, row in enumerate(rows):
            row[0] = positions[i]
            if first is not None:
                row[5] = first + i

    @staticmethod
    def _recorded(
        batch: list[Event], rows: list[list[Any]], stream: str | None, at: datetime
    ) -> list[Recorded]:
        return [Recorded(row[0], e, stream, row[5], at) for e, row in zip(batch, rows, strict=True)]

    @staticmethod
    def _version(cur: psycopg.Cursor[Any], stream: str) -> int:
        row = cur.execute(
            "SELECT version FROM tidings_streams WHERE stream = %s", (stream,)
        ).fetchone()
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
        rows = self._rows(batch, stream)
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
            await cur.execute(*self._single(rows[0], stream, expected))
            one = await cur.fetchone()
            if one is None:
                await cur.execute(
                    "SELECT version FROM tidings_streams WHERE stream = %s", (stream,)
                )
                row = await cur.fetchone()
                actual = 0 if row is None else int(row[0])
                raise ConcurrencyError(stream, expected, actual)  # type: ignore[arg-type]
            return [Recorded(one[0], batch[0], stream, one[1], one[2])]
        async with conn.transaction():
            await cur.execute(_RESERVE, (stream, expected, len(rows)))
            ok, actual, first, positions, at = await cur.fetchone()  # type: ignore[misc]
            if not ok:
                raise ConcurrencyError(stream, expected, actual)  # type: ignore[arg-type]
            self._fill(rows, positions, first)
            async with cur.copy(
                f"COPY events ({_INSERT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
            ) as cp:
                cp.set_types(_COPY_TYPES)
                for r in rows:
                    await cp.write_row(r)
        return self._recorded(batch, rows, stream, at)

    # ------------------------------------------------------------------ the read horizon

    def _raise_safe(self, last: int) -> int:
        with self._safe_lock:
            self._safe = max(self._safe, last)
            return self._safe

    def _horizon(self, conn: psycopg.Connection[Any]) -> int:
        """The highest position up to which reads are complete now (see the module docstring)."""
        row = conn.execute("SELECT last_position, writers FROM tidings_horizon()").fetchone()
        last, writers = int(row[0]), row[1]  # type: ignore[index]
        if last <= self._safe or not writers:
            return self._raise_safe(last)
        if self._stuck and self._stuck.issuperset(writers):
            return self._safe  # the same long writers as last time: do not wait again
        deadline = time.monotonic() + self._horizon_wait
        delay = 0.0002
        while True:
            active = conn.execute("SELECT tidings_writers_active(%s)", (writers,)).fetchone()
            if not (active and active[0]):
                return self._raise_safe(last)
            if time.monotonic() >= deadline:
                return self._give_up(writers)
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _give_up(self, writers: list[str]) -> int:
        """A writer stayed open past ``horizon_wait``: serve what is final, remember it."""
        self._stuck = frozenset(writers)
        log.warning(
            "PostgreSQL %s: transactions writing events (%s) stayed open for more than %.1fs; "
            "reads stop at position %d until they end",
            self._where_text,
            ", ".join(sorted(writers)),
            self._horizon_wait,
            self._safe,
        )
        return self._safe

    async def _ahorizon(self, conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute("SELECT last_position, writers FROM tidings_horizon()")
        row = await cur.fetchone()
        last, writers = int(row[0]), row[1]  # type: ignore[index]
        if last <= self._safe or not writers:
            return self._raise_safe(last)
        if self._stuck and self._stuck.issuperset(writers):
            return self._safe
        deadline = time.monotonic() + self._horizon_wait
        delay = 0.0002
        while True:
            cur = await conn.execute("SELECT tidings_writers_active(%s)", (writers,))
            active = await cur.fetchone()
            if not (active and active[0]):
                return self._raise_safe(last)
            if time.monotonic() >= deadline:
                return self._give_up(writers)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.01)

    # ------------------------------------------------------------------ reads

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[Recorded]:
        check_page(after_position, limit)
        return self.load(Criteria(after_position=after_position, limit=limit))

    async def aread_all(self, after_position: int = 0, limit: int = 1000) -> list[Recorded]:
        check_page(after_position, limit)
        return await self.aload(Criteria(after_position=after_position, limit=limit))

    def load(self, criteria: Criteria) -> list[Recorded]:
        """Events matching ``criteria`` in global order, never past the safe horizon."""
        check_criteria(criteria)
        with self._conn("load") as conn:
            horizon = self._horizon(conn)
            if horizon <= criteria.after_position:
                return []
            out: list[Recorded] = []
            after = criteria.after_position
            while True:
                sql, params, post = self._select(criteria, after, horizon)
                with conn.cursor(binary=True) as cur:
                    rows = cur.execute(sql, params).fetchall()
                if self._collect(rows, criteria, post, out):
                    return out
                after = rows[-1][0]

    async def aload(self, criteria: Criteria) -> list[Recorded]:
        check_criteria(criteria)
        async with self._aconn() as conn:
            horizon = await self._ahorizon(conn)
            if horizon <= criteria.after_position:
                return []
            out: list[Recorded] = []
            after = criteria.after_position
            while True:
                sql, params, post = self._select(criteria, after, horizon)
                cur = conn.cursor(binary=True)
                await cur.execute(sql, params)
                rows = await cur.fetchall()
                if self._collect(rows, criteria, post, out):
                    return out
                after = rows[-1][0]

    @staticmethod
    def _select(criteria: Criteria, after: int, horizon: int) -> tuple[str, list[Any], bool]:
        where, params, post = _where(
            Criteria(
                types=criteria.types,
                after_position=after,
                since=criteria.since,
                until=criteria.until,
                correlation_id=criteria.correlation_id,
                aggregate_id=criteria.aggregate_id,
                stream=criteria.stream,
            ),
            horizon,
        )
        page = 1000 if post or criteria.limit is None else criteria.limit
        params.append(page)
        return (
            f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY position LIMIT %s",
            params,
            post,
        )

    @staticmethod
    def _collect(
        rows: list[tuple[Any, ...]], criteria: Criteria, post: bool, out: list[Recorded]
    ) -> bool:
        """Append matching rows to ``out``; True when the load is complete."""
        for row in rows:
            rec = _record(row)
            if post and not criteria.matches(rec):
                continue
            out.append(rec)
            if criteria.limit is not None and len(out) >= criteria.limit:
                return True
        page = 1000 if post or criteria.limit is None else criteria.limit
        return len(rows) < page or (not post and criteria.limit is not None)

    def count(self, criteria: Criteria | None = None) -> int:
        """How many events ``criteria`` matches (limit ignored); replay uses it for progress."""
        criteria = criteria or Criteria()
        with self._conn("count") as conn:
            horizon = self._horizon(conn)
            where, params, post = _where(criteria, horizon)
            if not post:
                row = conn.execute(f"SELECT count(*) FROM events WHERE {where}", params).fetchone()
                return int(row[0]) if row else 0
        return len(self.load(Criteria(**{**_fields(criteria), "limit": None})))

    def load_stream(self, stream: str, from_version: int = 1) -> list[Recorded]:
        """A stream's events from ``from_version``. Versions of one stream commit in order (the
        stream row lock), so this needs no horizon."""
        with self._conn("load_stream") as conn, conn.cursor(binary=True) as cur:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM events WHERE stream = %s AND version >= %s "
                "ORDER BY version",
                (stream, from_version),
            ).fetchall()
        return [_record(r) for r in rows]

    async def aload_stream(self, stream: str, from_version: int = 1) -> list[Recorded]:
        async with self._aconn() as conn:
            cur = conn.cursor(binary=True)
            await cur.execute(
                f"SELECT {_COLUMNS} FROM events WHERE stream = %s AND version >= %s "
                "ORDER BY version",
                (stream, from_version),
            )
            rows = await cur.fetchall()
        return [_record(r) for r in rows]

    def stream_version(self, stream: str) -> int:
        with self._conn("stream_version") as conn, conn.cursor() as cur:
            return self._version(cur, stream)

    def head(self) -> int:
        with self._conn("head") as conn:
            row = conn.execute("SELECT COALESCE(max(position), 0) FROM events").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ asyncio plumbing

    def _aconn(self) -> _AsyncConn:
        self._check_open()
        return _AsyncConn(self)

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

    def _ensure_listener(self) -> _Listener:
        with self._listener_lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = _Listener(self)
                self._listener.start()
            return self._listener

    @property
    def listener(self) -> _Listener | None:
        """The LISTEN thread (``backend_pid``, ``connects``), for health checks and tests."""
        return self._listener

    def subscriptions(self) -> list[StoreSubscription]:
        return list(self._subscriptions)

    def checkpoint(self, name: str) -> int:
        with self._conn("checkpoint") as conn:
            row = conn.execute(
                "SELECT position FROM tidings_checkpoints WHERE name = %s", (name,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def save_checkpoint(self, name: str, position: int) -> None:
        with self._conn("save_checkpoint") as conn:
            conn.execute(_UPSERT_CHECKPOINT, (name, position))

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
        conn.execute(
            "INSERT INTO tidings_checkpoints (name, position) VALUES (%s, 0) "
            "ON CONFLICT (name) DO NOTHING",
            (name,),
        )
        row = conn.execute(
            "SELECT position FROM tidings_checkpoints WHERE name = %s FOR UPDATE", (name,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _move_checkpoint(conn: psycopg.Connection[Any], name: str, position: int) -> None:
        conn.execute(
            "UPDATE tidings_checkpoints SET position = %s, updated_at = now() WHERE name = %s",
            (position, name),
        )

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


def _fields(criteria: Criteria) -> dict[str, Any]:
    return {
        "types": criteria.types,
        "after_position": criteria.after_position,
        "since": criteria.since,
        "until": criteria.until,
        "correlation_id": criteria.correlation_id,
        "aggregate_id": criteria.aggregate_id,
        "stream": criteria.stream,
        "limit": criteria.limit,
    }


class _AsyncConnections:
    """Idle asyncio connections for the ``a``-methods, reused across calls.

    Deliberately not psycopg_pool's AsyncConnectionPool: its background tasks belong to one
    event loop and outlive a test's or a request's loop; this cache runs no task at all, so
    closing never needs the loop that opened a connection.
    """

    def __init__(self, store: PostgresStore, max_idle: int) -> None:
        self._store = store
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
        store = self._store
        try:
            conn = await psycopg.AsyncConnection.connect(
                store.url, autocommit=True, connect_timeout=max(1, round(store._connect_timeout))
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"PostgreSQL at {store._where_text}: cannot connect: {exc}"
            ) from None
        await _aconfigure(conn)
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


class _AsyncConn:
    """``async with`` an async connection, mapping connection trouble as ``_conn`` does."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        self._conn = await self._store._aconns.get()
        return self._conn

    async def __aexit__(self, *exc_info: Any) -> None:
        exc = exc_info[1]
        broken = isinstance(exc, psycopg.OperationalError)
        if self._conn is not None:
            self._store._aconns.put(self._conn, broken)
        if isinstance(exc, pg_errors.UndefinedTable):
            raise SchemaMissing(
                f"PostgreSQL at {self._store._where_text}: the tidings schema is gone ({exc}); "
                f"run `tidings migrate {redact_url(self._store.url)}`"
            ) from exc
        if broken:
            raise StoreUnavailable(
                f"PostgreSQL at {self._store._where_text}: connection lost: {exc}"
            ) from exc


class _Listener(threading.Thread):
    """The store's LISTEN connection: wakes subscriptions, survives a lost connection.

    Notifications are only wake-ups. While idle it runs ``SELECT 1`` every ``ping_interval`` so a
    silently dead connection is noticed; on any connection error it reconnects with backoff,
    LISTENs again and wakes every subscription, which then catches up from its position.
    """

    def __init__(self, store: PostgresStore) -> None:
        super().__init__(name=f"tidings-listen-{store.schema}", daemon=True)
        self._store = store
        self.ready = threading.Event()
        self.backend_pid: int | None = None
        self.connects = 0
        self._stopping = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        store = self._store
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    store.url,
                    autocommit=True,
                    connect_timeout=max(1, round(store._connect_timeout)),
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = conn.info.backend_pid
                    self.connects += 1
                    if self.connects > 1:
                        log.warning(
                            "PostgreSQL %s: LISTEN connection re-established; catching up",
                            store._where_text,
                        )
                    self.ready.set()
                    store._wakeup.notify()  # (re)connected: catch up whatever was missed
                    backoff = 0.05
                    self._serve(conn)
            except Exception as exc:  # any failure: keep the store's wake-ups alive
                self.ready.clear()
                if self._stopping.is_set():
                    return
                log.warning(
                    "PostgreSQL %s: LISTEN connection lost (%s); reconnecting in %.2fs, "
                    "subscriptions poll meanwhile",
                    store._where_text,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    backoff,
                    exc_info=not isinstance(exc, psycopg.Error),
                )
                store._wakeup.notify()
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        store = self._store
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            woke = False
            for note in conn.notifies(timeout=0.2, stop_after=1):
                if note.payload in (store.schema, ""):
                    woke = True
            if woke:
                store._wakeup.notify()
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= store._ping_interval:
                conn.execute("SELECT 1")  # raises on a dead connection
                idle_since = time.monotonic()
