"""API keys made through the HTTP API, kept in the store's database (component ``server``).

Only a key's SHA-256 is written, never the key: it is shown once, when it is made. A plain
digest is enough because the keys are 256 random bits (``secrets.token_urlsafe(32)``): a slow,
salted hash protects guessable passwords, and nobody can guess through 2**256 keys. Key
operations are rare (make, list, revoke) and checks read a cache (``server/auth.py``), so each
operation opens a connection of its own rather than holding a pool.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tidings import sqlfiles
from tidings.migrations import MigrationError, postgres_apply, sqlite_apply
from tidings.store.base import StoreError, StoreUnavailable
from tidings.store.sqlite import SqliteStore

__all__ = ["KeyStore", "StoredKey", "open_keys"]

_SQLITE = sqlfiles.load("tidings.server", "sql/sqlite/queries.sql")
_POSTGRES = sqlfiles.load("tidings.server", "sql/postgres/queries.sql")


@dataclass(frozen=True, slots=True)
class StoredKey:
    id: str
    name: str
    sha256: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: float


def _key(row: Sequence[Any]) -> StoredKey:
    return StoredKey(row[0], row[1], row[2], row[3], tuple(row[4].split()), float(row[5]))


class KeyStore:
    """Reads and writes ``tidings_api_keys`` on SQLite (a file path) or PostgreSQL (a URL)."""

    def __init__(self, *, sqlite_path: str | None = None, postgres_url: str | None = None) -> None:
        self._path = sqlite_path
        self._url = postgres_url
        self.q = _SQLITE if sqlite_path is not None else _POSTGRES
        with self._connection() as conn:
            if isinstance(conn, sqlite3.Connection):
                sqlite_apply(conn, ("server",))
            else:
                postgres_apply(conn, ("server",))

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        try:
            if self._path is not None:
                conn = sqlite3.connect(self._path, timeout=5.0, isolation_level=None)
                try:
                    yield conn
                finally:
                    conn.close()
                return
            import psycopg  # noqa: PLC0415 (the optional postgres extra)

            with psycopg.connect(self._url or "", autocommit=True, connect_timeout=5) as pg:
                yield pg
        except (sqlite3.Error, MigrationError) as exc:
            raise StoreError(f"API keys: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                raise StoreUnavailable(f"API keys: {exc}") from exc
            raise

    def keys(self) -> list[StoredKey]:
        with self._connection() as conn:
            return [_key(r) for r in conn.execute(self.q.list_keys).fetchall()]

    def insert(self, key: StoredKey) -> None:
        """Store ``key``; a name already taken is a ``ValueError``."""
        row = (key.id, key.name, key.sha256, key.prefix, " ".join(key.scopes), key.created_at)
        with self._connection() as conn:
            try:
                conn.execute(self.q.insert_key, row)
            except sqlite3.IntegrityError:
                raise ValueError(f"an API key named {key.name!r} exists") from None
            except Exception as exc:
                if type(exc).__name__ == "UniqueViolation":
                    raise ValueError(f"an API key named {key.name!r} exists") from None
                raise

    def delete(self, key_id: str) -> bool:
        with self._connection() as conn:
            return bool(conn.execute(self.q.delete_key, (key_id,)).rowcount)


def open_keys(store: Any) -> KeyStore | None:
    """The key store in ``store`` 's database (None for a store without one, e.g. memory)."""
    if isinstance(store, SqliteStore):
        return KeyStore(sqlite_path=store.path)
    url = getattr(store, "url", "")
    if isinstance(url, str) and url.startswith(("postgres://", "postgresql://")):
        return KeyStore(postgres_url=url)
    return None
