"""ActionResults on SQLite and PostgreSQL: one row per key, invalidation, compensation, pages,
and seed 001's monitoring query over the table as written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.triggers.jobs.conftest import pg_sql
from tidings.event import Event
from tidings.store import open_store
from tidings.triggers.results import ActionResult, ActionResults


@pytest.fixture
async def store_results(db_url: str) -> AsyncIterator[ActionResults]:
    r = ActionResults(db_url)
    try:
        yield r
    finally:
        await r.close()


def result(key: str, event_id: str, status: str = "succeeded", **kw: object) -> ActionResult:
    trigger, index = key.split(":")[1:3]
    return ActionResult(key, event_id, trigger, int(index), "log", status, **kw)  # type: ignore[arg-type]


async def test_one_row_per_key_the_last_outcome_wins(store_results: ActionResults) -> None:
    r = store_results
    await r.record("e1:t:0", event_id="e1", trigger_id="t", action_index=0, action_type="log",
                   status="failed", error="boom", attempts=1, duration_ms=3.5)  # fmt: skip
    first = await r.get("e1:t:0")
    assert first is not None and first.status == "failed" and first.error == "boom"
    await r.record_many(
        [
            result("e1:t:0", "e1", output={"n": 1, "deep": {"x": [1, "a"]}}, attempts=2),
            result("e1:t:1", "e1", "dead", error="no", attempts=4),
            result("e2:t:0", "e2"),
            result("e2:t:0", "e2", "failed", error="last in the batch wins"),
        ]
    )
    got = await r.get("e1:t:0")
    assert got is not None
    assert (got.status, got.output, got.error, got.attempts) == (
        "succeeded",
        {"n": 1, "deep": {"x": [1, "a"]}},
        None,
        2,
    )
    assert got.seq == first.seq and got.created_at == first.created_at
    assert got.updated_at is not None and got.created_at is not None
    assert [x.key for x in await r.for_event("e1")] == ["e1:t:0", "e1:t:1"]
    assert (await r.get("e2:t:0")).status == "failed"  # type: ignore[union-attr]
    assert (await r.counts())["succeeded"] == 1
    assert await r.counts() == {
        "succeeded": 1, "failed": 1, "dead": 1, "cancelled": 0, "invalidated": 0,
        "compensated": 0,
    }  # fmt: skip
    assert await r.get("nope") is None


async def test_invalidate_marks_succeeded_results_of_the_events_only(
    store_results: ActionResults,
) -> None:
    r = store_results
    await r.record_many(
        [
            result("a:t:0", "a"),
            result("a:t:1", "a", "dead", error="x"),
            result("b:t:0", "b"),
            result("c:t:0", "c"),
        ]
    )
    assert await r.invalidate_for_events(["a", "b", "zzz"]) == ["a:t:0", "b:t:0"]
    assert await r.invalidate_for_events(["a"]) == []  # already invalidated
    statuses = {x.key: x.status for x in await r.list()}
    assert statuses == {
        "a:t:0": "invalidated", "a:t:1": "dead", "b:t:0": "invalidated", "c:t:0": "succeeded",
    }  # fmt: skip
    # a late outcome of an invalidated key does not bring it back
    await r.record_many([result("a:t:0", "a")])
    assert (await r.get("a:t:0")).status == "invalidated"  # type: ignore[union-attr]
    assert await r.mark_compensated(["a:t:0", "c:t:0"]) == 1  # c was never invalidated
    assert (await r.get("a:t:0")).status == "compensated"  # type: ignore[union-attr]
    assert (await r.get("c:t:0")).status == "succeeded"  # type: ignore[union-attr]


async def test_list_pages_newest_first_with_filters(store_results: ActionResults) -> None:
    r = store_results
    await r.record_many([result(f"e{i}:t{i % 2}:0", f"e{i}") for i in range(7)])
    page1 = await r.list(limit=3)
    assert [x.key for x in page1] == ["e6:t0:0", "e5:t1:0", "e4:t0:0"]
    page2 = await r.list(limit=3, before=page1[-1].seq)
    assert [x.key for x in page2] == ["e3:t1:0", "e2:t0:0", "e1:t1:0"]
    assert [x.key for x in await r.list(trigger_id="t1")] == ["e5:t1:0", "e3:t1:0", "e1:t1:0"]
    assert [x.key for x in await r.list(event_id="e2", status="succeeded")] == ["e2:t0:0"]
    assert await r.list(status="dead") == []
    with pytest.raises(ValueError, match=r"list\(status=\): expected one of succeeded"):
        await r.list(status="ok")
    with pytest.raises(ValueError, match=r"list\(limit=\)"):
        await r.list(limit=0)
    with pytest.raises(ValueError, match="status: expected one of"):
        await r.record_many([result("x:t:0", "x", "fine")])


async def test_seed_001_match_rate_query_runs_as_written(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        recorded = store.append([Event(type="jobs.test.seed", data={"i": i}) for i in range(4)])
    finally:
        store.close()
    r = ActionResults(pg_url)
    try:
        await r.record_many([result(f"{rec.event.id}:t:0", rec.event.id) for rec in recorded[:1]])
        await r.record_many([result(f"{recorded[0].event.id}:t:1", recorded[0].event.id)])
    finally:
        await r.close()
    rows = pg_sql(
        pg_url,
        """SELECT
             COUNT(DISTINCT event_id) * 100.0 / (SELECT COUNT(*) FROM events) as match_rate_pct
           FROM action_results
           WHERE created_at > NOW() - INTERVAL '1 hour';""",
    )
    assert float(rows[0][0]) == 25.0
