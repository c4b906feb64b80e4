"""The triggers' tables in the store's database: connections, transactions and errors per dialect.

The job queue (``triggers.jobs.sql``) and the results (``triggers.results``) open the store's
database by its URL (``sqlite:///file.db`` or ``postgresql://...``) and apply the component's
migrations (``triggers``, ``sql/<dialect>/NNN_*.sql``) on open. Their statements are named
queries in ``sql/<dialect>/<file>.sql`` (``tidings.sqlfiles``). What differs between the
dialects lives here: SQLite is one connection of our own under a lock, every write one
``BEGIN IMMEDIATE`` transaction; PostgreSQL is a small pool of autocommit connections with
explicit transactions. Both are synchronous: the async callers run them with
``asyncio.to_thread``, a batch per call.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from tidings import sqlfiles
from tidings.migrations import MigrationError, sqlite_apply
from tidings.store.base import StoreError, StoreUnavailable
from tidings.store.component_db import PostgresPool, sqlite_errors
from tidings.urls import redact_url

__all__ = ["Database", "open_database"]

Dialect = Literal["sqlite", "postgres"]


class Database(ABC):
    """One database holding the ``triggers`` tables; ``queries(file)`` are its named queries."""

    dialect: Dialect
    where: str

    @abstractmethod
    def queries(self, name: str) -> sqlfiles.Queries[Any]: ...

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Any]:
        """A connection inside a write transaction, committed when the block ends."""

    @abstractmethod
    def connection(self) -> AbstractContextManager[Any]:
        """A connection for reads."""

    @abstractmethod
    def executemany(self, conn: Any, query: Any, rows: Sequence[Sequence[Any]]) -> int: ...

    @abstractmethod
    def close(self) -> None: ...


_SLOT = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def _load(dialect: Dialect, name: str) -> sqlfiles.Queries[str]:
    """The named queries of ``sql/<dialect>/<name>.sql``; a ``{fragment}`` slot in a query is
    filled with the query of that name in the same file (a shared column list, say)."""
    raw = sqlfiles.load("tidings.triggers", f"sql/{dialect}/{name}.sql")
    filled = {
        key: sqlfiles.fill(text, **{slot: raw[slot] for slot in set(_SLOT.findall(text))})
        for key, text in raw.items()
    }
    return sqlfiles.Queries(raw.source, filled)


class _Sqlite(Database):
    dialect: Dialect = "sqlite"

    def __init__(self, url: str, busy_timeout: float) -> None:
        from tidings.store.sqlite import path_of  # noqa: PLC0415 - the sqlite store module

        self.where = path_of(url)
        options = dict(parse_qsl(urlsplit(url).query))
        busy_timeout = float(options.get("busy_timeout", busy_timeout))
        self._lock = threading.Lock()
        self._queries: dict[str, sqlfiles.Queries[Any]] = {}
        try:
            self._conn = sqlite3.connect(
                self.where,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,  # used from worker threads (to_thread), under _lock
            )
            self._conn.execute("PRAGMA journal_mode = WAL")
            with self._lock:
                sqlite_apply(self._conn, ("triggers",))
        except (sqlite3.Error, MigrationError) as exc:
            raise StoreUnavailable(
                f"triggers: cannot use SQLite database {self.where!r}: {exc}; check that the "
                "file is a SQLite database and writable"
            ) from exc

    def queries(self, name: str) -> sqlfiles.Queries[Any]:
        if name not in self._queries:
            self._queries[name] = _load("sqlite", name)
        return self._queries[name]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._conn

    def _errors(self) -> AbstractContextManager[None]:
        return sqlite_errors(
            "triggers", self.where, "raise busy_timeout (sqlite:///file.db?busy_timeout=30)"
        )

    def executemany(self, conn: Any, query: Any, rows: Sequence[Sequence[Any]]) -> int:
        return int(conn.executemany(query, rows).rowcount)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Postgres(Database):
    dialect: Dialect = "postgres"

    def __init__(self, url: str, pool_size: int, connect_timeout: float) -> None:
        self._db = PostgresPool(
            url,
            component="triggers",
            label="triggers",
            pool_size=pool_size,
            timeout=connect_timeout,
        )
        self.where = self._db.where
        self._queries: dict[str, sqlfiles.Queries[Any]] = {}

    def queries(self, name: str) -> sqlfiles.Queries[Any]:
        if name not in self._queries:
            self._queries[name] = _load("postgres", name).map(str.encode)
        return self._queries[name]

    def transaction(self) -> AbstractContextManager[Any]:
        return self._db.transaction()

    def connection(self) -> AbstractContextManager[Any]:
        return self._db.connection()

    def executemany(self, conn: Any, query: Any, rows: Sequence[Sequence[Any]]) -> int:
        with conn.cursor() as cur:
            cur.executemany(query, rows)
            return int(cur.rowcount)

    def close(self) -> None:
        self._db.close()


def open_database(
    url: str, *, pool_size: int = 4, busy_timeout: float = 5.0, connect_timeout: float = 5.0
) -> Database:
    """The database at ``url`` with the ``triggers`` tables applied, or a StoreError saying
    which URLs can hold them."""
    if not isinstance(url, str):
        raise TypeError(f"expected a database URL string, got {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return _Sqlite(url, busy_timeout)
    if scheme in ("postgresql", "postgres"):
        return _Postgres(url, pool_size, connect_timeout)
    raise StoreError(
        f"the triggers' job queue and results need a durable database: sqlite:///file.db or "
        f"postgresql://..., got {redact_url(url)!r}; point them at the store's database"
    )
