"""The monitoring figures equal what the database says: seed 001's own queries (PostgreSQL,
as written in the seed) or the same counts on SQLite, the processor's checkpoint lag, the
results, the queue and the chain checkpoints."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from tests.triggers.jobs.conftest import pg_sql
from tidings.event import Event
from tidings.store import open_store
from tidings.triggers.checkpoints import open_checkpoints
from tidings.triggers.definitions import ActionSpec
from tidings.triggers.jobs import Job, open_job_queue
from tidings.triggers.monitoring import Monitor, processor_checkpoints
from tidings.triggers.results import ActionResults

SEED_INGESTION = "SELECT COUNT(*) FROM events WHERE created_at > NOW() - INTERVAL '1 minute';"
SEED_MATCH_RATE = """SELECT
  COUNT(DISTINCT event_id) * 100.0 / (SELECT COUNT(*) FROM events) as match_rate_pct
FROM action_results
WHERE created_at > NOW() - INTERVAL '1 hour';"""


def database_says(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            events = conn.execute("SELECT count(*) FROM tidings_events").fetchone()[0]
            matched = conn.execute("SELECT count(DISTINCT event_id) FROM action_results")
            return {"ingested": events, "rate": matched.fetchone()[0] * 100.0 / events}
        finally:
            conn.close()
    ingested = pg_sql(url, SEED_INGESTION)[0][0]
    return {"ingested": ingested, "rate": float(pg_sql(url, SEED_MATCH_RATE)[0][0])}


async def test_figures_equal_the_database(db_url: str) -> None:
    store = open_store(db_url)
    results = ActionResults(db_url)
    queue = open_job_queue("store", db_url)
    chains = open_checkpoints(store)
    monitor = Monitor(store, results, queue, config_triggers=2,
                      checkpoints=processor_checkpoints(2))  # fmt: skip
    try:
        empty = await monitor.figures()
        assert empty.head == 0 and empty.lag_events == 0 and empty.match_rate is None

        recorded = await store.aappend(
            [Event(type="svtest.order.placed", source="t", data={"n": i}) for i in range(8)]
        )
        spec = ActionSpec(type="log")
        jobs = [Job.for_event(r.event, "t1", 0, spec, position=r.position) for r in recorded[:3]]
        assert await queue.enqueue(jobs) == 3
        claimed = await queue.claim("w", 10, 30.0)
        await queue.fail(claimed[0], "boom", None)
        for job, status in zip(claimed, ("dead", "succeeded", "failed"), strict=True):
            await results.record(job.key, event_id=job.event_id, trigger_id="t1",
                                 action_index=0, action_type="log", status=status)  # fmt: skip
        # one partition at 6, the other at 3: the furthest behind counts
        names = processor_checkpoints(2)
        assert names == ["tidings-triggers:p0of2", "tidings-triggers:p1of2"]
        store.save_checkpoint(names[0], recorded[5].position)
        store.save_checkpoint(names[1], recorded[2].position)
        chains.advance(1, 100, "0xaa")
        chains.advance(8453, 7, "0xbb")
        time.sleep(0.05)

        f = await monitor.figures()
        said = database_says(db_url)
        assert f.ingested_last_minute == said["ingested"] == 8, (f, said)
        assert f.events_last_hour == 8 and f.matched_events_last_hour == 3
        assert f.match_rate is not None and abs(f.match_rate * 100 - said["rate"]) < 1e-9
        assert f.head == recorded[-1].position
        assert f.checkpoints == {names[0]: recorded[5].position, names[1]: recorded[2].position}
        assert f.lag_events == recorded[-1].position - recorded[2].position == 5
        assert f.lag_seconds >= 0.05, f
        assert f.results["dead"] == f.results["succeeded"] == f.results["failed"] == 1
        assert f.queue_depth == 2 and f.dead_jobs == 1, f  # two still running, one dead
        assert [(c["chain_id"], c["block_number"], c["block_hash"]) for c in f.chains] == [
            (1, 100, "0xaa"), (8453, 7, "0xbb"),
        ]  # fmt: skip
        view = f.to_dict()
        assert view["matching"]["match_rate_pct"] == round(300 / 8, 2)
        assert view["triggers"] == {"config": 2, "saved": 0}
    finally:
        monitor.close()
        chains.close()
        await queue.close()
        await results.close()
        store.close()
