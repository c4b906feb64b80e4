"""Seed 001's monitoring queries as figures: what ``GET /triggers/status`` answers and what
``/metrics`` exports (``tidings_triggers_*``, docs/metrics.md).

- ingestion: events stored in the last minute (the seed's query as written), and per second;
- processing lag: the store's head minus the processor's checkpoint (the store checkpoints of
  its partitions, ``tidings-triggers`` or ``tidings-triggers:p3of8``; the furthest behind
  counts), in events, and the age of the oldest event it has not finished;
- trigger match rate: events of the last hour that started an action, of the events stored in
  that hour;
- action outcomes: the results by status (succeeded, failed, dead, ...);
- queue depth: jobs waiting or running, and dead jobs (the DLQ);
- the last checkpoint of each chain (block number and hash).

Every figure is read from the database when asked (a few small queries), so the API, the
metrics and a ``psql`` session agree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tidings.triggers.checkpoints import CheckpointTable, open_checkpoints
from tidings.triggers.database import Database, open_database
from tidings.triggers.jobs.model import JobQueue
from tidings.triggers.results import ActionResults
from tidings.triggers.saved import SavedTriggers

__all__ = ["DEAD_CAP", "PROCESSOR_NAME", "Figures", "Monitor", "processor_checkpoints"]

#: The processor's store checkpoint name (``tidings.triggers.processor.DEFAULT_NAME``).
PROCESSOR_NAME = "tidings-triggers"
#: Dead jobs are counted up to this many for a queue without ``dead_count`` (listed, not
#: counted).
DEAD_CAP = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class Figures:
    """One reading of every figure; ``to_dict`` is the JSON of ``GET /triggers/status``."""

    ingested_last_minute: int
    head: int
    checkpoints: dict[str, int]
    lag_events: int
    lag_seconds: float
    matched_events_last_hour: int
    events_last_hour: int
    results: dict[str, int]
    queue_depth: int
    dead_jobs: int
    chains: list[dict[str, Any]]
    config_triggers: int
    saved_triggers: int
    read_at: float

    @property
    def ingestion_rate(self) -> float:
        """Events per second over the last minute."""
        return self.ingested_last_minute / 60.0

    @property
    def match_rate(self) -> float | None:
        """Share (0..1) of the last hour's events that started an action (None: no events)."""
        if not self.events_last_hour:
            return None
        return self.matched_events_last_hour / self.events_last_hour

    def to_dict(self) -> dict[str, Any]:
        rate = self.match_rate
        return {
            "ingestion": {
                "events_last_minute": self.ingested_last_minute,
                "events_per_second": round(self.ingestion_rate, 3),
            },
            "processing": {
                "head": self.head,
                "checkpoints": self.checkpoints,
                "lag_events": self.lag_events,
                "lag_seconds": round(self.lag_seconds, 3),
            },
            "matching": {
                "events_last_hour": self.events_last_hour,
                "matched_events_last_hour": self.matched_events_last_hour,
                "match_rate_pct": None if rate is None else round(rate * 100, 2),
            },
            "actions": self.results,
            "queue": {"depth": self.queue_depth, "dead": self.dead_jobs},
            "chains": self.chains,
            "triggers": {"config": self.config_triggers, "saved": self.saved_triggers},
        }


def processor_checkpoints(partitions: int = 1, name: str = PROCESSOR_NAME) -> list[str]:
    """The store checkpoints of a processor group of ``partitions`` (as the processor names
    them: the name alone for one partition, ``name:p3of8`` for several)."""
    if partitions <= 1:
        return [name]
    return [f"{name}:p{i}of{partitions}" for i in range(partitions)]


class Monitor:
    """Reads the figures of the store ``store`` (its database holds the triggers' tables too),
    the ``results`` and the job ``queue``."""

    def __init__(
        self,
        store: Any,
        results: ActionResults,
        queue: JobQueue,
        *,
        saved: SavedTriggers | None = None,
        config_triggers: int = 0,
        database: Database | None = None,
        checkpoints: list[str] | None = None,
    ) -> None:
        self.store = store
        self.results = results
        self.queue = queue
        self.saved = saved
        self.config_triggers = config_triggers
        self._db = database if database is not None else open_database(store.url, pool_size=1)
        self._own_db = database is None
        self._q = self._db.queries("monitoring")
        self._checkpoints = checkpoints if checkpoints is not None else processor_checkpoints()
        self._chains: CheckpointTable = open_checkpoints(store)

    def _sql_figures(self) -> tuple[int, int, int]:
        now = datetime.now(UTC)
        with self._db.connection() as conn:
            if self._db.dialect == "postgres":
                ingested = conn.execute(self._q.ingested).fetchone()[0]
                matched, events = conn.execute(self._q.match_window).fetchone()
            else:
                minute = _text(now - timedelta(minutes=1))
                ingested = conn.execute(self._q.ingested, (minute,)).fetchone()[0]
                hour = now - timedelta(hours=1)
                params = {"since_epoch": hour.timestamp(), "since_text": _text(hour)}
                matched, events = conn.execute(self._q.match_window, params).fetchone()
        return int(ingested), int(matched), int(events)

    def _store_figures(self) -> tuple[dict[str, int], int, int, float]:
        head = int(self.store.head())
        checkpoints = {name: int(self.store.checkpoint(name)) for name in self._checkpoints}
        if not checkpoints:
            return checkpoints, head, 0, 0.0
        behind = min(checkpoints.values())
        lag = max(0, head - behind)
        seconds = 0.0
        if lag:
            oldest = self.store.read_all(after_position=behind, limit=1)
            if oldest and oldest[0].recorded_at is not None:
                seconds = max(0.0, time.time() - oldest[0].recorded_at.timestamp())
        return checkpoints, head, lag, seconds

    def _sync(self) -> tuple[Any, ...]:
        ingested, matched, events = self._sql_figures()
        checkpoints, head, lag, seconds = self._store_figures()
        chains = [
            {
                "chain_id": c.chain_id,
                "block_number": c.block_number,
                "block_hash": c.block_hash,
                "updated_at": None if c.updated_at is None else c.updated_at.isoformat(),
            }
            for c in self._chains.all()
        ]
        saved = self.saved.count() if self.saved is not None else 0
        return ingested, matched, events, checkpoints, head, lag, seconds, chains, saved

    async def figures(self) -> Figures:
        (
            ingested,
            matched,
            events,
            checkpoints,
            head,
            lag,
            seconds,
            chains,
            saved,
        ) = await asyncio.to_thread(self._sync)
        results = await self.results.counts()
        depth = await self.queue.depth()
        counter = getattr(self.queue, "dead_count", None)
        dead = await counter() if counter is not None else len(await self.queue.dead(DEAD_CAP))
        return Figures(
            ingested_last_minute=ingested,
            head=head,
            checkpoints=checkpoints,
            lag_events=lag,
            lag_seconds=seconds,
            matched_events_last_hour=matched,
            events_last_hour=events,
            results=results,
            queue_depth=depth,
            dead_jobs=dead,
            chains=chains,
            config_triggers=self.config_triggers,
            saved_triggers=saved,
            read_at=time.time(),
        )

    def close(self) -> None:
        self._chains.close()
        if self._own_db:
            self._db.close()


def _text(t: datetime) -> str:
    """The SQLite store's time text (fixed width, sorts as time sorts)."""
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
