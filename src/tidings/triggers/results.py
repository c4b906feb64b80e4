"""ActionResults: what became of every action job, one row per job key (``action_results``).

The workers record each outcome (succeeded, failed while retries remain, dead after the last);
a later outcome of the same key replaces the earlier one, so the table holds one row per key
however often a job was attempted or redelivered. A chain reorg marks the succeeded results of
invalidated events ``invalidated`` (kept, never deleted), and a compensation that ran marks
them ``compensated``; those two are final: a late outcome of the same key does not overwrite
them. The table lives in the store's database next to ``events``, so seed 001's monitoring
query (``SELECT COUNT(DISTINCT event_id) ... FROM action_results WHERE created_at > ...``)
runs on PostgreSQL as written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from tidings.triggers.database import Database, open_database

__all__ = ["RESULT_STATUSES", "ActionResult", "ActionResults"]

RESULT_STATUSES = ("succeeded", "failed", "dead", "cancelled", "invalidated", "compensated")


@dataclasses.dataclass(frozen=True, slots=True)
class ActionResult:
    """One job's outcome. ``duration_ms`` is the last attempt's; ``output`` is what the action
    returned (JSON); ``created_at``/``updated_at`` are epoch seconds; ``seq`` orders pages."""

    key: str
    event_id: str
    trigger_id: str
    action_index: int
    action_type: str
    status: str
    output: Any = None
    error: str | None = None
    duration_ms: float | None = None
    attempts: int = 0
    created_at: float | None = None
    updated_at: float | None = None
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for the API."""
        return dataclasses.asdict(self)


def _result(row: Sequence[Any]) -> ActionResult:
    seq, key, event_id, trigger_id, index, action_type, status, output, error = row[:9]
    duration, attempts, created, updated = row[9:13]
    return ActionResult(
        key=key,
        event_id=event_id,
        trigger_id=trigger_id,
        action_index=int(index),
        action_type=action_type,
        status=status,
        output=None if output is None else json.loads(output),
        error=error,
        duration_ms=None if duration is None else float(duration),
        attempts=int(attempts),
        created_at=None if created is None else float(created),
        updated_at=None if updated is None else float(updated),
        seq=int(seq),
    )


def _output_json(result: ActionResult) -> str | None:
    if result.output is None:
        return None
    try:
        return msgspec.json.encode(result.output).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValueError(
            f"result {result.key!r}: output must be JSON values (a mapping of strings, numbers, "
            f"booleans, null, lists and mappings): {exc}"
        ) from exc


def _check(result: ActionResult) -> None:
    if not isinstance(result, ActionResult):
        raise TypeError(f"record(): expected ActionResults, got {type(result).__name__}")
    if result.status not in RESULT_STATUSES:
        raise ValueError(
            f"result {result.key!r}: status: expected one of {', '.join(RESULT_STATUSES)}, "
            f"got {result.status!r}"
        )


class ActionResults:
    """The results table in the database at ``url`` (the store's); applied on open. The methods
    are coroutines (the database work runs in a thread, a batch per call)."""

    def __init__(self, url: str, *, pool_size: int = 2, database: Database | None = None) -> None:
        self._db = database if database is not None else open_database(url, pool_size=pool_size)
        self._own_db = database is None
        self._q = self._db.queries("results")
        self.url = url

    @property
    def database(self) -> Database:
        """The triggers database the results live in (the processor records its start there)."""
        return self._db

    # ------------------------------------------------------------------ writing

    def record_sync(self, results: Sequence[ActionResult]) -> int:
        """``record_many`` for synchronous callers."""
        latest: dict[str, ActionResult] = {}
        for result in results:
            _check(result)
            latest[result.key] = result  # the last outcome of a key in one batch wins
        if not latest:
            return 0
        rows = [(r, _output_json(r)) for r in latest.values()]
        db, q = self._db, self._q
        with db.transaction() as conn:
            if db.dialect == "postgres":
                pg_rows = [
                    (
                        r.key, r.event_id, r.trigger_id, r.action_index, r.action_type, r.status,
                        out, r.error, r.duration_ms, r.attempts,
                    )
                    for r, out in rows
                ]  # fmt: skip
                return db.executemany(conn, q.record, pg_rows)
            now = time.time()
            values = [
                (
                    r.key, r.event_id, r.trigger_id, r.action_index, r.action_type, r.status,
                    out, r.error, r.duration_ms, r.attempts, now, now,
                )
                for r, out in rows
            ]  # fmt: skip
            return db.executemany(conn, q.record, values)

    async def record_many(self, results: Sequence[ActionResult]) -> int:
        """Record a batch of outcomes in one transaction; returns the rows written (a key whose
        row is invalidated or compensated is left as it is)."""
        batch = list(results)
        return await asyncio.to_thread(self.record_sync, batch) if batch else 0

    async def record(
        self,
        key: str,
        *,
        event_id: str,
        trigger_id: str,
        action_index: int,
        action_type: str,
        status: str,
        output: Mapping[str, Any] | None = None,
        error: str | None = None,
        duration_ms: float | None = None,
        attempts: int = 0,
    ) -> bool:
        """Record one outcome (see ``record_many``)."""
        result = ActionResult(
            key, event_id, trigger_id, action_index, action_type, status,
            None if output is None else dict(output), error, duration_ms, attempts,
        )  # fmt: skip
        return bool(await self.record_many([result]))

    def _keys(self, query: Any, keys: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(keys))
        if not ids:
            return []
        db = self._db
        with db.transaction() as conn:
            if db.dialect == "postgres":
                rows = conn.execute(query, (ids,)).fetchall()
            else:
                rows = conn.execute(query, (time.time(), json.dumps(ids))).fetchall()
        return sorted(r[0] for r in rows)

    async def invalidate_for_events(self, event_ids: Sequence[str]) -> list[str]:
        """Mark the succeeded results of ``event_ids`` ``invalidated`` (a reorg dropped the
        events); returns their keys, for compensation."""
        if isinstance(event_ids, str):
            raise TypeError("invalidate_for_events(): expected a sequence of ids, not a string")
        return await asyncio.to_thread(self._keys, self._q.invalidate_for_events, list(event_ids))

    def _mark(self, keys: list[str]) -> int:
        if not keys:
            return 0
        db = self._db
        with db.transaction() as conn:
            if db.dialect == "postgres":
                return int(conn.execute(self._q.mark_compensated, (keys,)).rowcount)
            params = (time.time(), json.dumps(keys))
            return int(conn.execute(self._q.mark_compensated, params).rowcount)

    async def mark_compensated(self, keys: Sequence[str]) -> int:
        """Mark invalidated results ``compensated`` (their compensation action ran)."""
        if isinstance(keys, str):
            raise TypeError("mark_compensated(): expected a sequence of keys, not a string")
        return await asyncio.to_thread(self._mark, list(dict.fromkeys(keys)))

    # ------------------------------------------------------------------ reading

    def _rows(self, query: Any, params: Any) -> list[ActionResult]:
        with self._db.connection() as conn:
            return [_result(r) for r in conn.execute(query, params).fetchall()]

    async def get(self, key: str) -> ActionResult | None:
        found = await asyncio.to_thread(self._rows, self._q.by_key, (key,))
        return found[0] if found else None

    async def for_event(self, event_id: str) -> list[ActionResult]:
        """Every result of one event, by trigger and action."""
        return await asyncio.to_thread(self._rows, self._q.for_event, (event_id,))

    async def list(
        self,
        *,
        status: str | None = None,
        trigger_id: str | None = None,
        event_id: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[ActionResult]:
        """Newest first; pass the ``seq`` of the last result of a page as ``before`` for the
        next one."""
        if status is not None and status not in RESULT_STATUSES:
            raise ValueError(
                f"list(status=): expected one of {', '.join(RESULT_STATUSES)}, got {status!r}"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValueError(f"list(limit=): expected an int from 1 to 10000, got {limit!r}")
        if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
            raise ValueError(f"list(before=): expected a result's seq (an int), got {before!r}")
        params = {
            "status": status,
            "trigger_id": trigger_id,
            "event_id": event_id,
            "before": before,
            "limit": limit,
        }
        return await asyncio.to_thread(self._rows, self._q.list, params)

    def _counts(self) -> dict[str, int]:
        with self._db.connection() as conn:
            rows = conn.execute(self._q.counts).fetchall()
        counts = dict.fromkeys(RESULT_STATUSES, 0)
        counts.update({str(status): int(n) for status, n in rows})
        return counts

    async def counts(self) -> dict[str, int]:
        """How many results have each status (every status present, zeros included)."""
        return await asyncio.to_thread(self._counts)

    async def close(self) -> None:
        if self._own_db:
            await asyncio.to_thread(self._db.close)

    def __repr__(self) -> str:
        return f"<ActionResults {self._db.dialect} {self._db.where}>"
