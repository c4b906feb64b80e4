"""The SQLite event store: the embedded default, zero configuration, safe across processes.

``sqlite:///events.db`` is relative to the working directory, ``sqlite:////var/lib/app/events.db``
is absolute (as in SQLAlchemy). The database runs in WAL mode so readers never block the writer;
``synchronous=FULL`` by default, because an acknowledged append must survive a power cut, not only
a crash (``synchronous="NORMAL"`` trades the last commits on power loss for speed). One writer
connection behind a lock serializes appends in this process; ``BEGIN IMMEDIATE`` plus the busy
timeout serializes them across processes. Positions are therefore committed in order: a reader
paging by position can never miss an event that commits later with a lower number.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tidings import sqlfiles
from tidings.event import Event, encode
from tidings.migrations import (
    Migration,
    MigrationError,
    database_components,
    sqlite_apply,
    sqlite_pending,
)
from tidings.retry import RetryPolicy
from tidings.store import AfterCommit, as_events
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
    read_body,
)
from tidings.store.chain import chain_values, has_chain
from tidings.store.subscription import (
    DEFAULT_PAGE_SIZE,
    AlsoWrite,
    ErrorCallback,
    PageTxHandler,
    PollingSubscription,
    TxHandler,
    Wakeup,
)
from tidings.topics import compile_pattern
from tidings.urls import redact_url

__all__ = ["SqliteStore", "apply_migrations", "migrate", "path_of"]

log = logging.getLogger("tidings.store.sqlite")

_MAX_POSITION = 2**63 - 1
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_Q = sqlfiles.load("tidings.store", "sql/sqlite/queries.sql")

# Subscriptions of every SqliteStore on one file in this process wake each other at once.
_wakeups: dict[str, Wakeup] = {}
_wakeups_lock = threading.Lock()


def path_of(url: str) -> str:
    """The file path in a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise StoreError(f"expected a sqlite:/// URL, got {redact_url(url)!r}")
    if parts.netloc:
        raise StoreError(
            f"SQLite URL {redact_url(url)!r} has a host part; use sqlite:///relative.db "
            "or sqlite:////absolute/path.db (three or four slashes)"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:" or path.startswith("file:"):
        raise StoreError(
            f"SQLite URL {redact_url(url)!r} names no database file; the store needs a file so "
            "every connection and process shares it: sqlite:///events.db (use memory:// for an "
            "in-process store)"
        )
    return path


def _fmt(t: datetime) -> str:
    """Fixed-width UTC text: sorts as time sorts, so range queries are plain comparisons."""
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    return t.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@functools.lru_cache(maxsize=256)
def _type_filter(patterns: str) -> Callable[[str], bool]:
    compiled = [compile_pattern(p) for p in patterns.split("\n")]
    return lambda name: any(p.matches(name) for p in compiled)


def _types_match(patterns: str, name: str) -> bool:
    """SQL function tidings_types(patterns, type): the pattern filter, pushed under LIMIT."""
    return _type_filter(patterns)(name)


def _where(criteria: Criteria) -> tuple[tuple[str, ...], int, list[Any]]:
    """The ``event_*`` conditions for ``criteria``, how many ``?`` marks ``event_types`` needs,
    and the parameters. Every criterion is filtered in SQL."""
    names = ["after"]
    params: list[Any] = [criteria.after_position]
    if not criteria.include_invalidated:
        names.append("valid")
    marks = 0
    if criteria.types:
        if criteria.exact_types is not None:
            names.append("types")
            marks = len(criteria.types)
            params += criteria.types
        else:
            names.append("type_patterns")
            params.append("\n".join(criteria.types))
    for name, value in (
        ("since", None if criteria.since is None else _fmt(criteria.since)),
        ("until", None if criteria.until is None else _fmt(criteria.until)),
        ("correlation_id", criteria.correlation_id),
        ("aggregate_id", criteria.aggregate_id),
        ("stream", criteria.stream),
    ):
        if value is not None:
            names.append(name)
            params.append(value)
    return tuple(names), marks, params


@functools.lru_cache(maxsize=256)
def _compose(template: str, names: tuple[str, ...], marks: int) -> str:
    """``template`` (events, events_limited, events_count) with those conditions."""
    parts = [
        sqlfiles.fill(_Q.event_types, marks=sqlfiles.marks(marks))
        if name == "types"
        else _Q[f"event_{name}"]
        for name in names
    ]
    return sqlfiles.fill(_Q[template], conditions=" AND ".join(parts))


def _row(row: tuple[Any, ...]) -> Recorded:
    position, stream, version, recorded_at, body, invalidated = row
    event, undecodable = read_body(body, position)
    return Recorded(
        position,
        event,
        stream,
        version,
        datetime.fromisoformat(recorded_at),
        bool(invalidated) or undecodable,
    )


def _connect(path: str, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(sqlfiles.fill(_Q.synchronous, level=synchronous))
        conn.create_function("tidings_types", 2, _types_match, deterministic=True)
        return conn
    except sqlite3.Error as exc:
        raise StoreUnavailable(
            f"cannot open SQLite database {path!r}: {exc}; check that its directory exists "
            "and is writable, and that the file is a SQLite database"
        ) from exc


def migrate(url: str, *, busy_timeout: float = 5.0) -> list[str]:
    """Apply the event store's missing migrations to the database at ``url``; return their
    names (idempotent)."""
    return [m.version for m in apply_migrations(url, ("store",), busy_timeout=busy_timeout)]


def apply_migrations(
    url: str, components: Sequence[str] | None = None, *, busy_timeout: float = 5.0
) -> list[Migration]:
    """Apply the missing files of ``components`` (default: every component of the database:
    store, webhook queue, ...) to the database at ``url``; return those applied."""
    path = path_of(url)
    conn = _connect(path, busy_timeout, "FULL")
    try:
        conn.execute(_Q.wal)
        return sqlite_apply(conn, database_components() if components is None else components)
    except (sqlite3.Error, MigrationError) as exc:
        raise StoreUnavailable(f"cannot migrate SQLite database {path!r}: {exc}") from exc
    finally:
        conn.close()


class SqliteStore:
    """EventStore on one SQLite file. See the module docstring for durability and concurrency."""

    def __init__(
        self,
        url: str,
        *,
        publish: Callable[[Event], Any] | Any | None = None,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        poll_interval: float = 0.05,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self.path = path_of(url)
        query = dict(parse_qsl(urlsplit(url).query))
        synchronous = str(query.pop("synchronous", synchronous)).upper()
        busy_timeout = float(query.pop("busy_timeout", busy_timeout))
        if query:
            raise StoreError(
                f"SQLite URL {redact_url(url)!r}: unknown option(s) {', '.join(sorted(query))}; "
                "known: synchronous, busy_timeout"
            )
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(
                f"SqliteStore(synchronous=): expected one of {_SYNCHRONOUS}, got {synchronous!r}"
            )
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._poll_interval = poll_interval
        self._publisher = AfterCommit(publish)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._subscriptions: list[PollingSubscription] = []
        self._closed = False
        self._writer = _connect(self.path, busy_timeout, synchronous)
        try:
            mode = self._writer.execute(_Q.wal).fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("SQLite %r: WAL mode unavailable (journal_mode=%s)", self.path, mode)
            if migrate:
                applied = sqlite_apply(self._writer, ("store",))
                if applied:
                    names = ", ".join(m.version for m in applied)
                    log.info("SQLite %r: applied migrations %s", self.path, names)
            elif sqlite_pending(self._writer, ("store",)):
                raise SchemaMissing(
                    f"SQLite database {self.path!r} has no (or an old) tidings schema; run "
                    f"`tidings migrate {url}` or open it with migrate=True"
                )
        except (sqlite3.Error, MigrationError) as exc:
            self._writer.close()
            raise StoreUnavailable(
                f"cannot use SQLite database {self.path!r}: {exc}; check that it is a SQLite "
                "database and writable"
            ) from exc
        except BaseException:
            self._writer.close()
            raise
        key = os.path.realpath(self.path)
        with _wakeups_lock:
            self._wakeup = _wakeups.setdefault(key, Wakeup())

    # ------------------------------------------------------------------ connections

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self._check_open()
            conn = _connect(self.path, self._busy_timeout, self._synchronous)
            conn.execute(_Q.read_only)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Recorded]:
        try:
            rows = self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error("read", exc) from exc
        return [_row(r) for r in rows]

    def _error(self, what: str, exc: sqlite3.Error) -> StoreError:
        if self._closed:
            return StoreError(f"store {self.url!r} is closed; open_store() it again")
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return StoreUnavailable(
                f"SQLite {self.path!r}: {what} timed out waiting for another writer "
                f"({self._busy_timeout}s busy_timeout): {exc}; raise busy_timeout or shorten "
                "the other process's transactions"
            )
        if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):
            return SchemaMissing(
                f"SQLite {self.path!r} lost its tidings schema ({exc}); run `tidings migrate "
                f"{self.url}`"
            )
        return StoreError(f"SQLite {self.path!r}: {what} failed: {exc}")

    # ------------------------------------------------------------------ writes

    @property
    def busy_timeout(self) -> float:
        """Seconds a connection waits for another process's write lock."""
        return self._busy_timeout

    @contextmanager
    def transaction(
        self, on_commit: Callable[[], None] | None = None
    ) -> Iterator[sqlite3.Connection]:
        """A write transaction on the store's writer connection, committed when the block ends
        and rolled back if it raises; ``on_commit`` runs after the commit, still under the lock
        (so what it queues follows commit order).

        Every in-process writer (appends, checkpoints, the webhook queue) goes through the one
        writer lock, so they queue on it instead of meeting in SQLite's busy handler, which
        sleeps 1, 2, 5, 10 … 100 ms between tries. sqlite3 errors are raised as they are.
        """
        self._check_open()
        conn = self._writer
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if on_commit is not None:
                on_commit()

    def append(
        self,
        events: Event | Sequence[Event],
        *,
        stream: str | None = None,
        expected_version: int | None = None,
        also: AlsoWrite | None = None,
    ) -> list[Recorded]:
        """Store ``events`` in one transaction (one executemany); all or nothing.

        ``also(conn, recorded)`` runs inside that transaction before the commit, so rows that
        belong with the events (webhook deliveries, an outbox) commit or vanish with them.
        """
        batch = as_events(events)
        if stream is None and expected_version is not None:
            raise ValueError("append(expected_version=...) needs a stream=")
        bodies = [encode(e).decode() for e in batch]  # validates before anything is written
        chains = [chain_values(e) for e in batch]  # so do the chain coordinates
        self._check_open()
        now = datetime.now(UTC)
        stamp = _fmt(now)
        try:
            with self.transaction(on_commit=lambda: self._publisher.enqueue(batch)) as conn:
                current = 0
                if stream is not None:
                    current = conn.execute(_Q.stream_version, (stream,)).fetchone()[0]
                    if expected_version is not None and expected_version != current:
                        raise ConcurrencyError(stream, expected_version, current)
                if not batch:
                    return []
                rows = [
                    (
                        e.id,
                        e.type,
                        stream,
                        None if stream is None else current + i + 1,
                        _fmt(e.time),
                        e.correlation_id,
                        e.aggregate_id,
                        stamp,
                        body,
                        e.type,  # event_type: seed 001's name for it
                        math.floor(e.time.timestamp()),  # seed 001's epoch seconds
                        stamp,  # created_at
                    )
                    for i, (e, body) in enumerate(zip(batch, bodies, strict=True))
                ]
                if any(has_chain(c) for c in chains):
                    rows = [row + c for row, c in zip(rows, chains, strict=True)]
                    conn.executemany(_Q.insert_chain, rows)
                else:
                    conn.executemany(_Q.insert, rows)
                last = conn.execute(_Q.last_position).fetchone()[0]
                first = last - len(batch) + 1
                recorded = [
                    Recorded(first + i, e, stream, None if stream is None else current + i + 1, now)
                    for i, e in enumerate(batch)
                ]
                if also is not None:
                    also(conn, recorded)
        except sqlite3.IntegrityError as exc:
            raise self._duplicate(batch, exc) from exc
        except sqlite3.Error as exc:
            raise self._error("append", exc) from exc
        self._wakeup.notify()
        self._publisher.drain()
        return recorded

    def _duplicate(self, batch: list[Event], exc: sqlite3.IntegrityError) -> StoreError:
        ids = [e.id for e in batch]
        seen: set[str] = set()
        dupes = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
        if not dupes:
            found = self._reader().execute(_Q.existing_ids, (json.dumps(ids),))
            dupes = [r[0] for r in found]
        if dupes:
            return DuplicateEvent(dupes[0])
        return StoreError(f"SQLite {self.path!r}: append rejected: {exc}; nothing was written")

    async def aappend(
        self,
        events: Event | Sequence[Event],
        *,
        stream: str | None = None,
        expected_version: int | None = None,
    ) -> list[Recorded]:
        return await asyncio.to_thread(
            self.append, events, stream=stream, expected_version=expected_version
        )

    # ------------------------------------------------------------------ reads

    def read_all(
        self, after_position: int = 0, limit: int = 1000, *, include_invalidated: bool = False
    ) -> list[Recorded]:
        check_page(after_position, limit)
        query = _Q.read_all_raw if include_invalidated else _Q.read_all
        return self._query(query, (after_position, limit))

    async def aread_all(
        self, after_position: int = 0, limit: int = 1000, *, include_invalidated: bool = False
    ) -> list[Recorded]:
        return await asyncio.to_thread(
            functools.partial(self.read_all, include_invalidated=include_invalidated),
            after_position,
            limit,
        )

    def load(self, criteria: Criteria) -> list[Recorded]:
        """Events matching ``criteria`` in global order; every criterion is filtered in SQL."""
        check_criteria(criteria)
        names, marks, params = _where(criteria)
        if criteria.limit is None:
            return self._query(_compose("events", names, marks), params)
        params.append(criteria.limit)
        return self._query(_compose("events_limited", names, marks), params)

    async def aload(self, criteria: Criteria) -> list[Recorded]:
        return await asyncio.to_thread(self.load, criteria)

    def count(self, criteria: Criteria | None = None) -> int:
        """How many events ``criteria`` matches (limit ignored); replay uses it for progress."""
        names, marks, params = _where(criteria or Criteria())
        try:
            query = _compose("events_count", names, marks)
            row = self._reader().execute(query, params).fetchone()
        except sqlite3.Error as exc:
            raise self._error("count", exc) from exc
        return int(row[0])

    def head(self) -> int:
        try:
            row = self._reader().execute(_Q.head).fetchone()
        except sqlite3.Error as exc:
            raise self._error("head", exc) from exc
        return int(row[0])

    def load_stream(self, stream: str, from_version: int = 1) -> list[Recorded]:
        return self._query(_Q.load_stream, (stream, from_version))

    async def aload_stream(self, stream: str, from_version: int = 1) -> list[Recorded]:
        return await asyncio.to_thread(self.load_stream, stream, from_version)

    def stream_version(self, stream: str) -> int:
        try:
            row = self._reader().execute(_Q.stream_version, (stream,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("stream_version", exc) from exc
        return int(row[0])

    # ------------------------------------------------------------------ chains

    def invalidate_chain(
        self, chain_id: int, after_block: int, before_position: int | None = None
    ) -> list[Recorded]:
        """Mark the events of ``chain_id`` above ``after_block`` invalidated (a reorg replaced
        their blocks); only those recorded before ``before_position`` when given, so the new
        branch's events already stored stay valid. Returns the events newly marked."""
        before = _MAX_POSITION if before_position is None else before_position
        try:
            with self.transaction() as conn:
                rows = conn.execute(_Q.invalidate_chain, (chain_id, after_block, before)).fetchall()
        except sqlite3.Error as exc:
            raise self._error("invalidate_chain", exc) from exc
        return sorted((_row(r) for r in rows), key=lambda rec: rec.position)

    def chain_blocks(
        self, chain_id: int, first: int, last: int, before_position: int | None = None
    ) -> list[tuple[int, str | None]]:
        """The blocks ``(number, hash)`` of ``chain_id``'s valid events from ``first`` to
        ``last`` (recorded before ``before_position`` when given), in block order."""
        before = _MAX_POSITION if before_position is None else before_position
        try:
            rows = self._reader().execute(_Q.chain_blocks, (chain_id, first, last, before))
            return [(int(r[0]), r[1]) for r in rows.fetchall()]
        except sqlite3.Error as exc:
            raise self._error("chain_blocks", exc) from exc

    def streams(self, after: str | None = None, limit: int = 100) -> list[tuple[str, int]]:
        try:
            rows = self._reader().execute(_Q.list_streams, (after or "", limit)).fetchall()
        except sqlite3.Error as exc:
            raise self._error("streams", exc) from exc
        return [(str(r[0]), int(r[1])) for r in rows]

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
        """Catch up from ``name``'s checkpoint, then follow live (see tidings.store.subscription).

        With ``transactional=True`` the handler gets ``(recorded, connection)``: a
        ``sqlite3.Connection`` inside an open transaction that also saves the checkpoint. Write
        your effects through it and do not commit; they commit together, or roll back together
        if the handler raises. Appends wait while the handler runs, so keep it short.
        ``batch=True`` hands it a list of events (a page) instead of one.
        """
        self._check_open()
        self._subscriptions = [s for s in self._subscriptions if s.running]
        if any(s.name == name for s in self._subscriptions):
            raise StoreError(
                f"subscription {name!r} is already running on this store; stop it first "
                "(two consumers of one checkpoint would overwrite each other)"
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

    def subscriptions(self) -> list[StoreSubscription]:
        return list(self._subscriptions)

    def checkpoint(self, name: str) -> int:
        try:
            row = self._reader().execute(_Q.checkpoint, (name,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("checkpoint", exc) from exc
        return 0 if row is None else int(row[0])

    def save_checkpoint(self, name: str, position: int) -> None:
        self._check_open()
        with self._write_lock:
            try:
                self._writer.execute(_Q.save_checkpoint, (name, position, _fmt(datetime.now(UTC))))
            except sqlite3.Error as exc:
                raise self._error("checkpoint", exc) from exc

    def reset_subscription(self, name: str, position: int = 0) -> None:
        """Move ``name``'s checkpoint; a running subscription of that name overwrites it, so
        stop it first."""
        if position < 0:
            raise ValueError(f"reset_subscription: position must be >= 0, got {position}")
        self.save_checkpoint(name, position)

    def handle_in_transaction(self, name: str, rec: Recorded, handler: TxHandler) -> None:
        with self.transaction() as conn:
            handler(rec, conn)
            if not conn.in_transaction:
                raise StoreError(
                    f"subscription {name!r}: the transactional handler ended the transaction "
                    "itself (COMMIT/ROLLBACK); let tidings commit its writes with the "
                    "checkpoint"
                )
            conn.execute(_Q.save_checkpoint, (name, rec.position, _fmt(datetime.now(UTC))))

    def handle_page_in_transaction(
        self, name: str, page: list[Recorded], handler: PageTxHandler
    ) -> None:
        """The checkpoint is read inside the write transaction, so a second process running the
        same subscription skips what the first has done: effects happen once."""
        with self.transaction() as conn:
            row = conn.execute(_Q.checkpoint, (name,)).fetchone()
            done = 0 if row is None else int(row[0])
            todo = [rec for rec in page if rec.position > done]
            if not todo:
                return
            handler(todo, conn)
            if not conn.in_transaction:
                raise StoreError(
                    f"subscription {name!r}: the transactional handler ended the transaction "
                    "itself (COMMIT/ROLLBACK); let tidings commit its writes with the "
                    "checkpoint"
                )
            conn.execute(_Q.save_checkpoint, (name, todo[-1].position, _fmt(datetime.now(UTC))))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop subscriptions (saving their checkpoints), then close every connection."""
        if self._closed:
            return
        for sub in self._subscriptions:
            sub.stop()
        self._subscriptions.clear()
        self._closed = True
        with self._write_lock:
            self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.url!r} is closed; open_store() it again")

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r}>"
