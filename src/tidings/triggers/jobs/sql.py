"""SqlJobQueue: the action jobs in the store's own database (``action_jobs``; SQLite or PostgreSQL).

The embedded default: no broker to run. A batch is one statement or one transaction (enqueue,
complete, fail); claims lease rows for a while (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
any number of workers in any number of processes claim at once without claiming a job twice;
one ``BEGIN IMMEDIATE`` transaction on SQLite). A worker that dies holding a claim loses it when
the lease runs out, and the next claim takes the job again (at-least-once); its late
``complete`` or ``fail`` then changes nothing, because the lease token no longer matches.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tidings.event import decode, encode, new_id
from tidings.triggers.database import Database, open_database
from tidings.triggers.jobs.model import Job, action_from_json, action_to_json, as_job

__all__ = ["SqlJobQueue"]


def _check_claim(worker_id: str, limit: int, lease_seconds: float) -> None:
    if not isinstance(worker_id, str) or not worker_id:
        raise ValueError(f"claim(worker_id=): expected a non-empty string, got {worker_id!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"claim(limit=): expected an int >= 1, got {limit!r}")
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int | float):
        raise ValueError(f"claim(lease_seconds=): expected seconds > 0, got {lease_seconds!r}")
    if not lease_seconds > 0:
        raise ValueError(f"claim(lease_seconds=): expected seconds > 0, got {lease_seconds!r}")


def _pairs_params(now: float, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {"now": now, "keys": [k for k, _ in pairs], "tokens": [t for _, t in pairs]}


def _job(row: Sequence[Any], token: str | None = None) -> Job:
    key, event_id, trigger_id, index, compensation, partition, position = row[:7]
    action, event, attempts, error = row[7:11]
    return Job(
        key=key,
        event_id=event_id,
        trigger_id=trigger_id,
        action_index=int(index),
        action=action_from_json(action),
        event=decode(event),
        partition=partition,
        compensation=bool(compensation),
        attempts=int(attempts),
        position=None if position is None else int(position),
        token=token,
        error=error,
    )


class SqlJobQueue:
    """The job queue in the database at ``url`` (the store's: ``sqlite:///file.db`` or
    ``postgresql://...``); its tables are applied on open. ``pool_size`` bounds the PostgreSQL
    connections of this queue in this process."""

    def __init__(self, url: str, *, pool_size: int = 4, database: Database | None = None) -> None:
        self._db = database if database is not None else open_database(url, pool_size=pool_size)
        self._own_db = database is None
        self._q = self._db.queries("jobs")
        self.url = url
        self._closed = False
        self.counts: Counter[str] = Counter()  # enqueued (new), duplicates (keys seen before)
        self._listeners: list[Callable[[], None]] = []

    def on_enqueue(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from any thread) after each enqueue that added jobs: workers in
        this process start them at once instead of at their next poll."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ writing

    def enqueue_sync(self, jobs: Sequence[Job]) -> int:
        """``enqueue`` for synchronous callers (one transaction)."""
        if not jobs:
            return 0
        rows = []
        actions: dict[int, str] = {}  # a batch repeats its specs and events: encode each once
        events: dict[int, str] = {}
        for job in map(as_job, jobs):
            action = actions.get(id(job.action))
            if action is None:
                action = actions[id(job.action)] = action_to_json(job.action)
            event = events.get(id(job.event))
            if event is None:
                event = events[id(job.event)] = encode(job.event).decode()
            rows.append((job, {"action": action, "event": event}))
        now = time.time()
        db, q = self._db, self._q
        with db.transaction() as conn:
            values = [
                (
                    j.key,
                    j.event_id,
                    j.trigger_id,
                    j.action_index,
                    j.action.type,
                    j.compensation,  # sqlite3 stores a bool as 0 or 1
                    j.partition,
                    j.position,
                    b["action"],
                    b["event"],
                    now,
                    now,
                    now,
                )
                for j, b in rows
            ]
            added = db.executemany(conn, q.enqueue, values)
        return self._count(len(values), added)

    async def enqueue(self, jobs: Sequence[Job]) -> int:
        """Add ``jobs`` in one transaction; returns how many were new (see ``JobQueue``)."""
        batch = list(jobs)
        if not batch:
            return 0
        return await asyncio.to_thread(self.enqueue_sync, batch)

    def _count(self, offered: int, added: int) -> int:
        self.counts["enqueued"] += added
        self.counts["duplicates"] += offered - added
        if added:
            for listener in self._listeners:
                listener()
        return added

    def _claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[Job]:
        _check_claim(worker_id, limit, lease_seconds)
        now = time.time()
        token = new_id()
        params = {
            "now": now,
            "until": now + lease_seconds,
            "token": token,
            "worker": worker_id,
            "n": limit,
        }
        with self._db.transaction() as conn:
            rows = conn.execute(self._q.claim, params).fetchall()
        jobs = [_job(r, token) for r in rows]
        jobs.sort(key=lambda j: (j.position if j.position is not None else -1, j.key))
        return jobs

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[Job]:
        return await asyncio.to_thread(self._claim, worker_id, limit, lease_seconds)

    def _leased(self, jobs: Sequence[Job], what: str) -> list[tuple[str, str]]:
        out = []
        for job in jobs:
            if job.token is None:
                raise ValueError(f"{what}(): job {job.key!r} was not claimed (it has no lease)")
            out.append((job.key, job.token))
        return out

    def _by_lease(self, jobs: Sequence[Job], what: str) -> int:
        """Run statement ``what`` (``complete`` or ``release``) on the jobs still leased."""
        pairs = self._leased(jobs, what)
        if not pairs:
            return 0
        now = time.time()
        db, query = self._db, self._q[what]
        with db.transaction() as conn:
            if db.dialect == "postgres":
                return int(conn.execute(query, _pairs_params(now, pairs)).rowcount)
            return db.executemany(conn, query, [(now, k, t) for k, t in pairs])

    async def complete(self, job: Job, output: Mapping[str, Any] | None = None) -> bool:
        """Mark ``job`` done; False when its lease was lost (another worker has it now)."""
        return bool(await self.complete_many([job]))

    async def complete_many(self, jobs: Sequence[Job]) -> int:
        batch = list(jobs)
        return await asyncio.to_thread(self._by_lease, batch, "complete") if batch else 0

    def _fail(self, failures: Sequence[tuple[Job, str, float | None]]) -> int:
        if not failures:
            return 0
        pairs = self._leased([f[0] for f in failures], "fail")
        errors = [str(f[1]) for f in failures]
        retry_ats = [None if f[2] is None else float(f[2]) for f in failures]
        now = time.time()
        db, q = self._db, self._q
        with db.transaction() as conn:
            if db.dialect == "postgres":
                params = {
                    "now": now,
                    "keys": [k for k, _ in pairs],
                    "tokens": [t for _, t in pairs],
                    "errors": errors,
                    "retry_ats": retry_ats,
                }
                return int(conn.execute(q.fail, params).rowcount)
            rows = [
                (retry_at, error, now, key, token)
                for (key, token), error, retry_at in zip(pairs, errors, retry_ats, strict=True)
            ]
            return db.executemany(conn, q.fail, rows)

    async def fail(self, job: Job, error: str, retry_at: float | None) -> bool:
        """Due again at ``retry_at`` (epoch seconds) or, with None, dead (the DLQ)."""
        return bool(await self.fail_many([(job, error, retry_at)]))

    async def fail_many(self, failures: Sequence[tuple[Job, str, float | None]]) -> int:
        batch = list(failures)
        return await asyncio.to_thread(self._fail, batch) if batch else 0

    async def release(self, jobs: Sequence[Job]) -> int:
        """Hand claimed jobs back unattempted (a worker stopping): due again at once."""
        batch = list(jobs)
        return await asyncio.to_thread(self._by_lease, batch, "release") if batch else 0

    def _cancel(self, event_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return 0
        now = time.time()
        db, q = self._db, self._q
        with db.transaction() as conn:
            if db.dialect == "postgres":
                params = {"now": now, "event_ids": ids}
                return int(conn.execute(q.cancel_for_events, params).rowcount)
            return int(conn.execute(q.cancel_for_events, (now, json.dumps(ids))).rowcount)

    async def cancel_for_events(self, event_ids: Sequence[str]) -> int:
        """Cancel the pending jobs (new, or waiting for a retry) of ``event_ids``; running,
        done and dead jobs are left alone. Returns how many were cancelled."""
        if isinstance(event_ids, str):
            raise TypeError("cancel_for_events(): expected a sequence of event ids, not a string")
        return await asyncio.to_thread(self._cancel, list(event_ids))

    # ------------------------------------------------------------------ reading

    def _one(self, query: Any, params: Any) -> Any:
        with self._db.connection() as conn:
            row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    async def state(self, key: str) -> str | None:
        """The state of the job with ``key`` (``JOB_STATES``), or None when never enqueued."""
        value = await asyncio.to_thread(self._one, self._q.state, (key,))
        return None if value is None else str(value)

    async def depth(self) -> int:
        """Jobs pending or running."""
        return int(await asyncio.to_thread(self._one, self._q.depth, ()))

    async def dead_count(self) -> int:
        """Dead jobs (the DLQ), counted."""
        return int(await asyncio.to_thread(self._one, self._q.dead_count, ()))

    def _dead(self, limit: int) -> list[Job]:
        with self._db.connection() as conn:
            rows = conn.execute(self._q.dead, (limit,)).fetchall()
        return [_job(r) for r in rows]

    async def dead(self, limit: int = 100) -> list[Job]:
        """Dead jobs (the DLQ), the most recent first, each with its last ``error``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"dead(limit=): expected an int >= 1, got {limit!r}")
        return await asyncio.to_thread(self._dead, limit)

    def _retry_dead(self, key: str | None) -> int:
        now = time.time()
        with self._db.transaction() as conn:
            if key is None:
                return int(conn.execute(self._q.retry_dead, {"now": now}).rowcount)
            return int(conn.execute(self._q.retry_dead_key, {"now": now, "key": key}).rowcount)

    async def retry_dead(self, key: str | None = None) -> int:
        """Make dead jobs (one, or all) pending again with their attempts from zero."""
        return await asyncio.to_thread(self._retry_dead, key)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._own_db:
                await asyncio.to_thread(self._db.close)

    def __repr__(self) -> str:
        return f"<SqlJobQueue {self._db.dialect} {self._db.where}>"
