"""The webhook queue's two databases: connections, transactions, errors, and the SQL of each.

The statements are in ``sql/<dialect>/queries.sql`` (the same names in both); the tables come
from the migrations in ``sql/<dialect>/NNN_*.sql``, which ``open_database`` applies when the
queue opens (``tidings migrate URL`` applies them too). What differs between the dialects lives
here: SQLite writes inside the store's own write transactions (one writer lock per process) and
reads on a connection of its own; PostgreSQL has a small pool of its own and claims with
``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from tidings import sqlfiles
from tidings.migrations import MigrationError, sqlite_apply
from tidings.store.base import StoreError, StoreUnavailable
from tidings.store.component_db import PostgresPool, sqlite_errors
from tidings.store.sqlite import SqliteStore
from tidings.urls import redact_url

if TYPE_CHECKING:
    from tidings.store.postgres import PostgresStore

__all__ = ["QueueDatabase", "open_database"]

_SQLITE = sqlfiles.load("tidings.webhooks", "sql/sqlite/queries.sql")
_POSTGRES = sqlfiles.load("tidings.webhooks", "sql/postgres/queries.sql")


class QueueDatabase(ABC):
    """What the queue asks of a database; ``q`` holds the dialect's named statements."""

    where = ""
    q: sqlfiles.Queries[Any]

    def execute(self, conn: Any, query: Any, params: Sequence[Any] = ()) -> Any:
        return conn.execute(query, params)

    @abstractmethod
    def executemany(self, conn: Any, query: Any, rows: Sequence[Sequence[Any]]) -> int: ...

    def ids(self, values: list[str]) -> Any:
        """A list of ids as the dialect's statements take it (``= ANY(%s)`` / ``json_each(?)``)."""
        return values

    @abstractmethod
    def deliveries_query(self, filters: Sequence[str]) -> Any:
        """``deliveries`` with ``delivery_<filter>`` conditions (``endpoint_id``, ``state``,
        ``event_id``, ``before``), composed once per combination."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Any]:
        """A connection in a write transaction, committed when the block ends."""

    @abstractmethod
    def connection(self) -> AbstractContextManager[Any]:
        """A connection for reads."""

    @abstractmethod
    def claim(
        self, conn: Any, limit: int, until: float, token: str, now: float, skip: list[str]
    ) -> list[tuple[Any, ...]]:
        """Lease due rows; each row is a delivery's 12 columns and its event's body (or None)."""

    def serialize(self, conn: Any) -> None:
        """Make writers of deliveries for possibly known events take turns (see PostgreSQL);
        SQLite has one writer at a time (BEGIN IMMEDIATE) already."""
        return

    @abstractmethod
    def close(self) -> None: ...


class _Sqlite(QueueDatabase):
    """Writes in the store's own write transactions (one writer lock for the whole process);
    reads on a connection of our own."""

    q = _SQLITE

    def __init__(self, store: SqliteStore) -> None:
        self.where = store.path
        self._store = store
        self._lock = threading.Lock()
        self._composed: dict[tuple[str, ...], str] = {}
        try:
            self._conn = sqlite3.connect(
                store.path,
                timeout=store.busy_timeout,
                isolation_level=None,
                check_same_thread=False,  # used from worker threads (to_thread), under _lock
            )
            self._conn.execute(self.q.wal)
            with self._lock:
                sqlite_apply(self._conn, ("webhooks",))
        except (sqlite3.Error, MigrationError) as exc:
            raise StoreUnavailable(
                f"webhook queue: cannot use SQLite database {store.path!r}: {exc}"
            ) from exc

    def executemany(self, conn: Any, query: Any, rows: Sequence[Sequence[Any]]) -> int:
        return int(conn.executemany(query, rows).rowcount)

    def ids(self, values: list[str]) -> str:
        return json.dumps(values)

    def deliveries_query(self, filters: Sequence[str]) -> str:
        key = tuple(filters)
        if key not in self._composed:
            parts = [self.q[f"delivery_{f}"] for f in key] or ["true"]
            self._composed[key] = sqlfiles.fill(self.q.deliveries, conditions=" AND ".join(parts))
        return self._composed[key]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._errors(), self._store.transaction() as conn:
            yield conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._conn

    def _errors(self) -> AbstractContextManager[None]:
        return sqlite_errors("webhook queue", self.where, "raise the store's busy_timeout")

    def claim(
        self, conn: Any, limit: int, until: float, token: str, now: float, skip: list[str]
    ) -> list[tuple[Any, ...]]:
        params = {"until": until, "token": token, "now": now, "n": limit, "skip": json.dumps(skip)}
        rows = conn.execute(self.q.claim, params).fetchall()
        if not rows:
            return []
        positions = json.dumps([r[2] for r in rows])
        bodies = dict(conn.execute(self.q.event_bodies, (positions,)).fetchall())
        return [(*r, bodies.get(r[2])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Postgres(QueueDatabase):
    """A small pool of our own (autocommit; transactions are explicit)."""

    q = _POSTGRES.map(str.encode)

    def __init__(self, store: PostgresStore, pool_size: int) -> None:
        self._db = PostgresPool(
            store.url,
            component="webhooks",
            label="webhook queue",
            pool_size=pool_size,
            timeout=store.connect_timeout,
        )
        self.where = self._db.where
        self._composed: dict[tuple[str, ...], bytes] = {}

    def deliveries_query(self, filters: Sequence[str]) -> bytes:
        from psycopg import sql  # noqa: PLC0415

        key = tuple(filters)
        if key not in self._composed:
            parts = [sql.SQL(_POSTGRES[f"delivery_{f}"]) for f in key] or [sql.SQL("true")]
            query = sql.SQL(_POSTGRES.deliveries).format(conditions=sql.SQL(" AND ").join(parts))
            self._composed[key] = query.as_bytes(None)
        return self._composed[key]

    def transaction(self) -> AbstractContextManager[Any]:
        return self._db.transaction()

    def connection(self) -> AbstractContextManager[Any]:
        return self._db.connection()

    def claim(
        self, conn: Any, limit: int, until: float, token: str, now: float, skip: list[str]
    ) -> list[tuple[Any, ...]]:
        params = {"until": until, "token": token, "now": now, "n": limit, "skip": skip}
        return list(conn.execute(self.q.claim, params).fetchall())

    def executemany(self, conn: Any, query: Any, rows: Sequence[Sequence[Any]]) -> int:
        with conn.cursor() as cur:
            cur.executemany(query, rows)
            return int(cur.rowcount)

    def serialize(self, conn: Any) -> None:
        """Two sources handing over the same stored event (say the store's subscription and a
        Bus that the store publishes to) must not both find it without deliveries."""
        conn.execute(self.q.serialize_existing)

    def close(self) -> None:
        self._db.close()


def open_database(store: SqliteStore | PostgresStore, pool_size: int) -> QueueDatabase:
    """The queue's database for ``store`` (its schema applied), or a StoreError saying which
    stores can hold a queue."""
    pg = sys.modules.get("tidings.store.postgres")
    if isinstance(store, SqliteStore):
        return _Sqlite(store)
    if pg is not None and isinstance(store, pg.PostgresStore):
        return _Postgres(store, pool_size)
    url = getattr(store, "url", None)
    raise StoreError(
        f"webhook delivery needs a durable store: sqlite:///file.db or postgresql://..., "
        f"got {type(store).__name__}"
        + (f" ({redact_url(url)})" if isinstance(url, str) else "")
        + "; open the store with one of those URLs"
    )
