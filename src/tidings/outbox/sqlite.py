"""The relay's side of the SQLite outbox: leases, and in-process wake-ups on commit.

SQLite has one writer at a time and no row locks, so a claim is a lease: one ``BEGIN
IMMEDIATE`` transaction stamps the oldest free rows with this relay's owner id and an expiry,
skipping every key on which another relay holds a live lease (order per key). The relay
publishes outside any transaction, then deletes (or marks) the rows it still owns. A relay that
dies leaves its lease to expire (``lease`` seconds); then another relay publishes the rows again.
Writers hold the database's write lock until they commit, so ids commit in order and no row can
appear behind one already claimed.

Wake-ups: a SQLAlchemy session that wrote outbox rows calls ``wake(database)`` after its
commit, which wakes every relay of this process on that file at once; other writers (another
process, a raw sqlite3 connection) are noticed by polling.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid

from tidings.outbox.claims import Batch, decode_rows
from tidings.outbox.queries import query
from tidings.store.base import StoreUnavailable
from tidings.store.sqlite import path_of
from tidings.store.subscription import Wakeup

__all__ = ["SqliteClaims", "wake"]

_wakeups: dict[str, Wakeup] = {}
_wakeups_lock = threading.Lock()


def _wakeup_for(path: str) -> Wakeup:
    key = os.path.realpath(path)
    with _wakeups_lock:
        found = _wakeups.get(key)
        if found is None:
            found = _wakeups[key] = Wakeup()
        return found


def wake(database: str) -> None:
    """Wake the relays of this process that serve the SQLite file ``database``."""
    key = os.path.realpath(database)
    with _wakeups_lock:
        found = _wakeups.get(key)
    if found is not None:
        found.notify()


class SqliteClaims:
    def __init__(self, url: str, *, lease: float = 60.0, busy_timeout: float = 5.0) -> None:
        self.path = path_of(url)
        self.where = self.path
        self.lease = lease
        self.owner = uuid.uuid4().hex
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        self._wakeup = _wakeup_for(self.path)
        self._event = self._wakeup.register()
        self._lock = threading.Lock()  # health checks read from other threads

    def claim(self, limit: int) -> Batch | None:
        now = time.time()
        self._event.clear()  # before the claim: a commit after it wakes the next wait
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    query("sqlite", "claim"),
                    {"owner": self.owner, "until": now + self.lease, "now": now, "limit": limit},
                ).fetchall()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if not rows:
            return None
        return decode_rows(rows)

    def _settle(self, name: str, batch: Batch) -> None:
        with self._lock:
            self._conn.execute(
                query("sqlite", name),
                {"owner": self.owner, "ids": json.dumps(batch.ids), "now": time.time()},
            )

    def finish(self, batch: Batch, mark: bool) -> None:
        self._settle("mark" if mark else "delete", batch)

    def release(self, batch: Batch) -> None:
        self._settle("release", batch)

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def wake(self) -> None:
        self._event.set()

    def pending(self) -> tuple[int, float]:
        with self._lock:
            row = self._conn.execute(query("sqlite", "pending"), {"now": time.time()}).fetchone()
        count, age = row or (0, None)
        return int(count), max(0.0, float(age or 0.0))

    def purge(self, retention: float, limit: int) -> int:
        with self._lock:
            cur = self._conn.execute(
                query("sqlite", "purge"), {"before": time.time() - retention, "limit": limit}
            )
        return cur.rowcount

    def close(self) -> None:
        self._wakeup.unregister(self._event)
        with self._lock:
            self._conn.close()
