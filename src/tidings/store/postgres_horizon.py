"""The PostgreSQL store's read horizon: the highest position up to which reads are complete.

Positions are drawn from a sequence at insert time but become visible at commit, so a plain
``WHERE position > N`` reader can skip a lower position that commits late. Every inserting
transaction holds a shared advisory lock (the *fence*, see 001_events.sql) from before it draws
a position until it ends. A reader reads the sequence's last value L, then the list of fence
holders (``tidings_horizon()``); once those have ended, every position <= L is final (committed
and visible, or rolled back for good), so reads return rows up to L only. A reader waits at most
``wait`` seconds for writers that were in flight when it started; past that it serves what is
final and remembers those writers, so the next reads do not wait for them again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import psycopg

from tidings.store.postgres_queries import Q as _Q

__all__ = ["ReadHorizon"]

log = logging.getLogger("tidings.store.postgres")


class ReadHorizon:
    """Shared by every reader of one store: ``safe`` only grows."""

    def __init__(self, where: str, wait: float) -> None:
        self._where = where
        self._wait = wait
        self._safe = 0  # every position <= _safe is final (monotonic, shared by all readers)
        self._lock = threading.Lock()
        self._stuck: frozenset[str] = frozenset()  # writers a read already gave up waiting for

    def _raise(self, last: int) -> int:
        with self._lock:
            self._safe = max(self._safe, last)
            return self._safe

    def _settled(self, last: int, writers: list[str]) -> int | None:
        """The horizon without waiting, or None when ``writers`` must be waited for."""
        if last <= self._safe or not writers:
            return self._raise(last)
        if self._stuck and self._stuck.issuperset(writers):
            return self._safe  # the same long writers as last time: do not wait again
        return None

    def read(self, conn: psycopg.Connection[Any]) -> int:
        """The highest position up to which reads on ``conn`` are complete now."""
        row = conn.execute(_Q.horizon).fetchone()
        last, writers = int(row[0]), row[1]  # type: ignore[index]
        settled = self._settled(last, writers)
        if settled is not None:
            return settled
        deadline = time.monotonic() + self._wait
        delay = 0.0002
        while True:
            active = conn.execute(_Q.writers_active, (writers,)).fetchone()
            if not (active and active[0]):
                return self._raise(last)
            if time.monotonic() >= deadline:
                return self._give_up(writers)
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    async def aread(self, conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute(_Q.horizon)
        row = await cur.fetchone()
        last, writers = int(row[0]), row[1]  # type: ignore[index]
        settled = self._settled(last, writers)
        if settled is not None:
            return settled
        deadline = time.monotonic() + self._wait
        delay = 0.0002
        while True:
            cur = await conn.execute(_Q.writers_active, (writers,))
            active = await cur.fetchone()
            if not (active and active[0]):
                return self._raise(last)
            if time.monotonic() >= deadline:
                return self._give_up(writers)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _give_up(self, writers: list[str]) -> int:
        """A writer stayed open past ``wait``: serve what is final, remember it."""
        self._stuck = frozenset(writers)
        log.warning(
            "PostgreSQL %s: transactions writing events (%s) stayed open for more than %.1fs; "
            "reads stop at position %d until they end",
            self._where,
            ", ".join(sorted(writers)),
            self._wait,
            self._safe,
        )
        return self._safe
