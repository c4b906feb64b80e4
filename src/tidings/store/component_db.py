"""A component's own connections to the store's database (the webhook queue, the triggers' tables).

Each such component keeps a small pool (PostgreSQL) or connection (SQLite) of its own beside the
store's, applies its migration component when it opens, and reports database failures as the
store does: ``StoreUnavailable`` for what a retry may cure (no connection, a lost one, a busy
SQLite writer), ``StoreError`` otherwise, each message naming the component and the database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tidings.migrations import MigrationError, postgres_apply
from tidings.store.base import StoreError, StoreUnavailable

__all__ = ["PostgresPool", "sqlite_errors"]


class PostgresPool:
    """An autocommit pool (transactions are explicit) with ``component``'s migrations applied."""

    def __init__(
        self, url: str, *, component: str, label: str, pool_size: int, timeout: float
    ) -> None:
        # psycopg is the optional "postgres" extra: imported only when PostgreSQL is used
        import psycopg  # noqa: PLC0415
        from psycopg_pool import ConnectionPool, PoolTimeout  # noqa: PLC0415

        from tidings.store.migrate import describe  # noqa: PLC0415

        self._psycopg = psycopg
        self._pool_timeout = PoolTimeout
        self.label = label
        self.where = describe(url)
        self.timeout = timeout
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout))},
            open=False,
            name=f"tidings-{component}-{self.where}",
        )
        try:
            self._pool.open(wait=True, timeout=timeout + 1)
        except PoolTimeout:
            self._pool.close()
            raise StoreUnavailable(
                f"{label}: PostgreSQL at {self.where}: no connection within {timeout}s"
            ) from None
        try:
            with self.connection() as conn:
                postgres_apply(conn, (component,))
        except MigrationError as exc:
            self._pool.close()
            if isinstance(exc.__cause__, psycopg.OperationalError):
                raise StoreUnavailable(
                    f"{label}: PostgreSQL at {self.where}: connection lost: {exc}"
                ) from exc
            raise StoreError(f"{label}: PostgreSQL at {self.where}: {exc}") from exc
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def connection(self) -> Iterator[Any]:
        psycopg = self._psycopg
        try:
            with self._pool.connection(timeout=self.timeout) as conn:
                yield conn
        except self._pool_timeout:
            raise StoreUnavailable(
                f"{self.label}: PostgreSQL at {self.where}: no connection available within "
                f"{self.timeout}s"
            ) from None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"{self.label}: PostgreSQL at {self.where}: connection lost: {exc}"
            ) from exc
        except psycopg.Error as exc:
            raise StoreError(f"{self.label}: PostgreSQL at {self.where}: {exc}") from exc

    def close(self) -> None:
        self._pool.close()


@contextmanager
def sqlite_errors(label: str, where: str, busy_hint: str) -> Iterator[None]:
    """SQLite failures as store errors; a busy writer is ``StoreUnavailable`` with ``busy_hint``."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreUnavailable(
                f"{label} on SQLite {where!r}: timed out waiting for another writer: {exc}; "
                f"{busy_hint}"
            ) from exc
        raise StoreError(f"{label} on SQLite {where!r}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"{label} on SQLite {where!r}: {exc}") from exc
