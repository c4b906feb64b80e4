"""Per-chain checkpoints (seed 001's ``checkpoints`` table): the last block processed per chain.

One table per store database (migration component ``triggers``, ``002_checkpoints.sql``),
opened beside the store: ``open_checkpoints(store)`` picks the store's dialect. The memory store
keeps them in a dict. Rows are seed 001's shape, so an indexer such as Ponder can keep writing
its own upserts into the same table.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from tidings import sqlfiles
from tidings.migrations import MigrationError, postgres_apply, sqlite_apply
from tidings.store.base import StoreError, StoreUnavailable
from tidings.urls import redact_url

__all__ = [
    "Checkpoint",
    "CheckpointTable",
    "MemoryCheckpoints",
    "PostgresCheckpoints",
    "SqliteCheckpoints",
    "open_checkpoints",
]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The last block of ``chain_id`` whose events were processed."""

    chain_id: int
    block_number: int
    block_hash: str
    updated_at: datetime | None = None


class CheckpointTable(Protocol):
    def get(self, chain_id: int) -> Checkpoint | None: ...

    def all(self) -> list[Checkpoint]: ...

    def advance(self, chain_id: int, block_number: int, block_hash: str) -> Checkpoint:
        """Move forward to this block (never back); return the checkpoint as it is now."""
        ...

    def reset(self, chain_id: int, block_number: int, block_hash: str) -> Checkpoint:
        """Set it to this block, back or forth (a reorg's recovery)."""
        ...

    def forget(self, chain_id: int) -> None: ...

    def close(self) -> None: ...


def _check(chain_id: int, block_number: int, block_hash: str) -> None:
    if not isinstance(chain_id, int) or isinstance(chain_id, bool):
        raise TypeError(f"checkpoint: chain_id must be an int, got {chain_id!r}")
    if not isinstance(block_number, int) or isinstance(block_number, bool) or block_number < 0:
        raise ValueError(f"checkpoint: block_number must be an int >= 0, got {block_number!r}")
    if not isinstance(block_hash, str) or not block_hash:
        raise ValueError(f"checkpoint: block_hash must be a non-empty string, got {block_hash!r}")


class MemoryCheckpoints:
    """Checkpoints of a memory:// store, in this process only."""

    def __init__(self) -> None:
        self._rows: dict[int, Checkpoint] = {}
        self._lock = threading.Lock()

    def get(self, chain_id: int) -> Checkpoint | None:
        return self._rows.get(chain_id)

    def all(self) -> list[Checkpoint]:
        return [self._rows[k] for k in sorted(self._rows)]

    def advance(self, chain_id: int, block_number: int, block_hash: str) -> Checkpoint:
        _check(chain_id, block_number, block_hash)
        with self._lock:
            now = self._rows.get(chain_id)
            if now is None or now.block_number <= block_number:
                now = Checkpoint(chain_id, block_number, block_hash, datetime.now(UTC))
                self._rows[chain_id] = now
            return now

    def reset(self, chain_id: int, block_number: int, block_hash: str) -> Checkpoint:
        _check(chain_id, block_number, block_hash)
        with self._lock:
            row = Checkpoint(chain_id, block_number, block_hash, datetime.now(UTC))
            self._rows[chain_id] = row
            return row

    def forget(self, chain_id: int) -> None:
        with self._lock:
            self._rows.pop(chain_id, None)

    def close(self) -> None:
        return None


def _utc(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


class SqliteCheckpoints:
    """Checkpoints in the store's SQLite file. Writes go through the store's writer lock
    (``store.transaction()``), so they queue with appends instead of meeting in SQLite's busy
    handler; reads use a connection of their own."""

    _Q = sqlfiles.load("tidings.triggers", "sql/sqlite/chains.sql")

    def __init__(self, store: Any) -> None:
        self._store = store
        self._path: str = store.path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self._path, timeout=store.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            sqlite_apply(self._conn, ("triggers",))  # BEGIN IMMEDIATE per file, on its own
        except (sqlite3.Error, MigrationError) as exc:
            self._conn.close()
            raise StoreUnavailable(
                f"SQLite {self._path!r}: cannot create the checkpoints table: {exc}"
            ) from exc

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite {self._path!r}: checkpoints: {what} failed: {exc}") from exc

    @staticmethod
    def _row(row: tuple[Any, ...]) -> Checkpoint:
        return Checkpoint(int(row[0]), int(row[1]), str(row[2]), _utc(row[3]))

    def get(self, chain_id: int) -> Checkpoint | None:
        with self._errors("read"), self._lock:
            row = self._conn.execute(self._Q.one, (chain_id,)).fetchone()
        return None if row is None else self._row(row)

    def all(self) -> list[Checkpoint]:
        with self._errors("read"), self._lock:
            rows = self._conn.execute(self._Q.every).fetchall()
        return [self._row(r) for r in rows]

    def _write(self, query: str, chain_id: int, block_number: int, block_hash: str) -> Checkpoint:
        _check(chain_id, block_number, block_hash)
        stamp = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
        with self._errors("write"), self._store.transaction() as conn:
            conn.execute(query, (chain_id, block_number, block_hash, stamp))
            row = conn.execute(self._Q.one, (chain_id,)).fetchone()
        return self._row(row)

    def advance(self, chain_id: int, block_number: int, block_hash: str) -> Checkpoint:
        return self._write(self._Q.advance, chain_id, block_number, block_hash)

    def reset(self, chain_id: int, block_number: int, block_hash: str) -> Checkpoint:
        return self._write(self._Q.reset, chain_id, block_number, block_hash)

    def forget(self, chain_id: int) -> None:
        with self._errors("write"), self._store.transaction() as conn:
            conn.execute(self._Q.forget, (chain_id,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresCheckpoints:
    """Checkpoints in the store's PostgreSQL database, over one connection of their own
    (autocommit; every statement is one upsert or one read). A lost connection is opened
    again on the next call."""

    _Q = sqlfiles.load("tidings.triggers", "sql/postgres/chains.sql")

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        from tidings.store.migrate import connect  # noqa: PLC0415 (psycopg only when used)

        self._connect: Callable[[], Any] = lambda: connect(
            url, connect_timeout=connect_timeout, autocommit=True
        )
        self._where = redact_url(url)
        self._lock = threading.Lock()
        self._conn: Any = self._connect()
        try:
            postgres_apply(self._conn, ("triggers",))
        except MigrationError as exc:
            self._conn.close()
            raise StoreError(
                f"PostgreSQL {self._where}: cannot create the checkpoints table: {exc}"
            ) from exc

    def _run(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | list[Any] | None:
        import psycopg  # noqa: PLC0415

        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn.closed:
                        self._conn = self._connect()
                    cur = self._conn.execute(query, params)
                    return cur.fetchall() if cur.description is not None else None
                except psycopg.OperationalError as exc:
                    if attempt == 2:
                        raise StoreUnavailable(
                            f"PostgreSQL {self._where}: checkpoints: connection lost: {exc}"
                        ) from exc
                    self._conn.close()
        return None  # pragma: no cover - the loop returns or raises

    @staticmethod
    def _row(chain_id: int, row: tuple[Any, ...]) -> Checkpoint:
        return Checkpoint(chain_id, int(row[0]), str(row[1]), row[2])

    def get(self, chain_id: int) -> Checkpoint | None:
        rows = self._run(self._Q.one, (chain_id,))
        return Checkpoint(*rows[0]) if rows else None

    def all(self) -> list[Checkpoint]:
        return [Checkpoint(*r) for r in self._run(self._Q.every, ()) or []]

    def advance(self, chain_id: int, block_number: int, block_hash: str) -> Checkpoint:
        _check(chain_id, block_number, block_hash)
        rows = self._run(self._Q.advance, (chain_id, block_number, block_hash))
        if rows:
            return self._row(chain_id, rows[0])
        now = self.get(chain_id)  # it was ahead already: unchanged
        assert now is not None
        return now

    def reset(self, chain_id: int, block_number: int, block_hash: str) -> Checkpoint:
        _check(chain_id, block_number, block_hash)
        rows = self._run(self._Q.reset, (chain_id, block_number, block_hash))
        assert rows
        return self._row(chain_id, rows[0])

    def forget(self, chain_id: int) -> None:
        self._run(self._Q.forget, (chain_id,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_checkpoints(store: Any) -> CheckpointTable:
    """The checkpoints table beside ``store`` (created by the migration runner if missing)."""
    scheme = urlsplit(str(getattr(store, "url", ""))).scheme.lower()
    if scheme == "memory":
        return MemoryCheckpoints()
    if scheme == "sqlite":
        return SqliteCheckpoints(store)
    if scheme in ("postgresql", "postgres"):
        return PostgresCheckpoints(store.url, connect_timeout=store.connect_timeout)
    raise StoreError(
        f"chain checkpoints: no checkpoints table for a {scheme or 'this'} store; use a "
        "memory://, sqlite:/// or postgresql:// store"
    )
