"""The relay's side of the PostgreSQL outbox: claims held in an open transaction, LISTEN wake-ups.

A claim is one transaction that stays open while its batch is published (see the named queries
in ``queries/postgres.sql``): it locks the keys of the oldest pending rows with transaction-level
advisory locks, takes their rows (and rows without a key) ``FOR UPDATE SKIP LOCKED``, and after
the publish deletes or marks them and commits. A relay that dies mid-publish loses its
connection; PostgreSQL rolls the claim back and another relay takes the rows at once, no lease
to wait out. There is no cursor, so a row whose transaction commits late is simply found by the
next claim. A second connection LISTENs on ``tidings_outbox`` (one payload-less notification
per committing transaction) so the relay wakes on commit; polling remains the fallback.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg import sql

from tidings.outbox.claims import Batch, decode_rows
from tidings.outbox.queries import query
from tidings.store.migrate import connect, describe

__all__ = ["CHANNEL", "PostgresClaims"]

CHANNEL = "tidings_outbox"
MAX_KEYS = 1000  # advisory locks per claim: the server's lock table is shared and finite

_Q = {name: query("postgresql", name) for name in ("scan", "lock_keys", "take", "pending")}


class PostgresClaims:
    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        self.where = describe(url)
        self._conn: psycopg.Connection[Any] = connect(url, connect_timeout=connect_timeout)
        try:
            self._listen = connect(url, connect_timeout=connect_timeout, autocommit=True)
            self._listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        except BaseException:
            self._conn.close()
            raise

    def claim(self, limit: int) -> Batch | None:
        conn = self._conn
        self._drain_notifications()  # before the scan: a commit after it wakes the next wait
        scanned = conn.execute(_Q["scan"], {"limit": limit}).fetchall()
        keys: list[str] = []
        seen: set[str] = set()
        loose: list[int] = []
        for row_id, key in scanned:
            if key is None:
                loose.append(row_id)
            elif key not in seen and len(keys) < MAX_KEYS:
                seen.add(key)
                keys.append(key)
        locked = [r[0] for r in conn.execute(_Q["lock_keys"], {"keys": keys})] if keys else []
        if not locked and not loose:
            conn.rollback()
            return None
        rows = conn.execute(_Q["take"], {"keys": locked, "loose": loose, "limit": limit}).fetchall()
        if not rows:
            conn.rollback()
            return None
        return decode_rows(rows)

    def finish(self, batch: Batch, mark: bool) -> None:
        self._conn.execute(query("postgresql", "mark" if mark else "delete"), {"ids": batch.ids})
        self._conn.commit()

    def release(self, batch: Batch) -> None:
        self._conn.rollback()

    def _drain_notifications(self) -> None:
        for _ in self._listen.notifies(timeout=0):
            pass

    def wait(self, timeout: float) -> bool:
        return any(True for _ in self._listen.notifies(timeout=timeout, stop_after=1))

    def wake(self) -> None:
        """Nothing to do: the relay waits in short slices and checks its stop flag between."""

    def pending(self) -> tuple[int, float]:
        with self._listen.cursor() as cur:
            count, age = cur.execute(_Q["pending"]).fetchone() or (0, None)
        return int(count), float(age or 0.0)

    def purge(self, retention: float, limit: int) -> int:
        cur = self._conn.execute(
            query("postgresql", "purge"), {"retention": retention, "limit": limit}
        )
        self._conn.commit()
        return cur.rowcount

    def close(self) -> None:
        for conn in (self._conn, self._listen):
            with contextlib.suppress(Exception):  # a broken connection: nothing more to do
                conn.close()
