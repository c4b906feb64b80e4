"""The ``/triggers`` routes against a real ``tidings serve`` (SQLite and PostgreSQL stores):
CRUD with every definition checked (422 naming the field and a condition's position), config
triggers read-only, scopes, secrets never shown, results and the DLQ, and the status figures
equal to what the database says."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import Running
from tests.triggers.jobs.conftest import (  # noqa: F401 - fixtures, found by name
    pg_url,
    redis_url,
    triggers_pg_database,
)
from tidings.event import Event
from tidings.triggers.definitions import ActionSpec
from tidings.triggers.jobs import Job, open_job_queue
from tidings.triggers.jobs.redis import RedisJobQueue
from tidings.triggers.results import ActionResults

Start = Callable[..., Awaitable[Running]]

READER = "reader-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdefgh"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


RO, RW = bearer(READER), bearer(ADMIN)

YAML_TRIGGER = {
    "id": "from-yaml",
    "pattern": "svtest.user.*",
    "actions": [{"type": "webhook", "url": "https://ops:s3cret@hooks.example.com/x"}],
}


def config(store_url: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "server": {
            "api_keys": [
                {"name": "dash", "key": READER, "scopes": ["read"]},
                {"name": "ops", "key": ADMIN, "scopes": ["admin"]},
            ]
        },
        "triggers": [YAML_TRIGGER],
    }
    if store_url is not None:
        out["store"] = {"url": store_url}
    return out


def big(trigger_id: str = "big-orders", **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": trigger_id,
        "pattern": "svtest.order.*",
        "condition": "data.amount > 100",
        "actions": [{"type": "log", "name": "note"}],
    }
    raw.update(changes)
    return raw


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tidings.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_crud_round_trip_with_scopes(serve: Start, store_url: str) -> None:
    app = await serve(config(store_url))
    status, body = await app.post("/triggers", big(), headers=RO)
    assert status == 403, body
    status, body = await app.get("/triggers")
    assert status == 401, body

    status, made = await app.post("/triggers", big(), headers=RW)
    assert status == 201, made
    assert made["source"] == "api" and made["version"] == 1 and made["enabled"] is True
    status, again = await app.post("/triggers", big(), headers=RW)
    assert status == 409 and again["field"] == "id", again

    status, listed = await app.get("/triggers", headers=RO)
    assert status == 200, listed
    assert [(t["id"], t["source"]) for t in listed["triggers"]] == [
        ("big-orders", "api"),
        ("from-yaml", "config"),
    ]
    yaml_view = listed["triggers"][1]
    assert "s3cret" not in str(listed) and "***" in yaml_view["actions"][0]["url"], yaml_view

    status, page = await app.get("/triggers?limit=1", headers=RO)
    assert [t["id"] for t in page["triggers"]] == ["big-orders"] and page["next_cursor"]
    status, rest = await app.get(f"/triggers?limit=1&cursor={page['next_cursor']}", headers=RO)
    assert [t["id"] for t in rest["triggers"]] == ["from-yaml"], rest
    assert rest["next_cursor"] is None

    status, one = await app.get("/triggers/big-orders", headers=RO)
    assert status == 200 and one["condition"] == "data.amount > 100", one

    # a GET, edited, can be PUT back (read-only keys are ignored)
    edited = {**one, "condition": "data.amount > 1000"}
    status, replaced = await app.request("PUT", "/triggers/big-orders", edited, headers=RW)
    assert status == 200 and replaced["version"] == 2, replaced
    status, created = await app.request(
        "PUT",
        "/triggers/other",
        {"pattern": "svtest.x.*", "actions": [{"type": "log"}]},
        headers=RW,
    )
    assert status == 201 and created["id"] == "other", created

    status, patched = await app.request(
        "PATCH", "/triggers/big-orders", {"description": "large"}, headers=RW
    )
    assert status == 200 and patched["description"] == "large" and patched["version"] == 3
    assert patched["condition"] == "data.amount > 1000"

    status, off = await app.post("/triggers/big-orders/disable", headers=RW)
    assert status == 200 and off["enabled"] is False, off
    status, on = await app.post("/triggers/big-orders/enable", headers=RW)
    assert status == 200 and on["enabled"] is True, on
    status, body = await app.post("/triggers/big-orders/enable", headers=RO)
    assert status == 403, body

    status, body = await app.request("DELETE", "/triggers/big-orders", headers=RW)
    assert status == 204, body
    status, gone = await app.get("/triggers/big-orders", headers=RO)
    assert status == 404 and gone["status"] == 404, gone
    status, gone = await app.request("DELETE", "/triggers/big-orders", headers=RW)
    assert status == 404, gone


async def test_bad_definitions_are_422_naming_the_field(serve: Start) -> None:
    app = await serve(config())
    status, body = await app.post("/triggers", big(condition="data.amount > "), headers=RW)
    assert status == 422, body
    assert body["field"] == "condition" and "position 14" in body["detail"], body
    assert body["type"] == "urn:tidings:problem:invalid-trigger"

    status, body = await app.post("/triggers", big(actions=[{"type": "fax"}]), headers=RW)
    assert status == 422 and body["field"] == "actions[0].type", body
    assert "unknown action type 'fax'" in body["detail"], body

    status, body = await app.post("/triggers", big(colour="red"), headers=RW)
    assert status == 422 and body["field"] == "colour", body

    status, body = await app.post("/triggers", [big()], headers=RW)
    assert status == 400 and body["field"] == "body", body

    # PATCH and PUT are checked exactly like a new trigger
    status, body = await app.post("/triggers", big(), headers=RW)
    assert status == 201, body
    status, body = await app.request(
        "PATCH", "/triggers/big-orders", {"condition": "data.amount >> 2"}, headers=RW
    )
    assert status == 422 and body["field"] == "condition", body
    status, body = await app.request(
        "PATCH", "/triggers/big-orders", {"actions": [{"type": "webhook"}]}, headers=RW
    )
    assert status == 422 and body["field"].startswith("actions[0]"), body
    status, body = await app.request(
        "PATCH", "/triggers/big-orders", {"pattern": "svtest.order..x"}, headers=RW
    )
    assert status == 422 and body["field"] == "pattern", body
    status, body = await app.request("PUT", "/triggers/big-orders", big("else"), headers=RW)
    assert status == 422 and body["field"] == "id", body
    status, body = await app.request("PATCH", "/triggers/nope", {"description": "x"}, headers=RW)
    assert status == 404, body
    status, one = await app.get("/triggers/big-orders", headers=RO)
    assert one["version"] == 1 and one["condition"] == "data.amount > 100", one

    # the masked secret GET shows is not a secret
    hook = {"type": "webhook", "url": "https://ops:***@hooks.example.com/x"}
    status, body = await app.post("/triggers", big("hook", actions=[hook]), headers=RW)
    assert status == 422 and body["field"] == "actions[0].url", body
    assert "how GET shows a secret" in body["detail"], body

    # config triggers are the file's; route names are not ids
    for method, path, payload in [
        ("POST", "/triggers", {**YAML_TRIGGER}),
        ("PUT", "/triggers/from-yaml", YAML_TRIGGER),
        ("PATCH", "/triggers/from-yaml", {"description": "x"}),
        ("DELETE", "/triggers/from-yaml", None),
        ("POST", "/triggers/from-yaml/disable", None),
        ("PUT", "/triggers/status", big("status")),
    ]:
        status, body = await app.request(method, path, payload, headers=RW)
        assert status == 409, (method, path, body)
    status, body = await app.post("/triggers", big("results"), headers=RW)
    assert status == 422 and body["field"] == "id", body


async def test_results_dlq_and_status_agree_with_the_database(serve: Start, tmp_path: Path) -> None:
    db = tmp_path / "tidings.db"
    app = await serve(config(f"sqlite:///{db}"))
    store = app.service.store
    events = [
        Event(type="svtest.order.placed", source="t", data={"amount": n}) for n in (5, 500, 900)
    ]
    recorded = await store.aappend(events)
    url = f"sqlite:///{db}"
    results = ActionResults(url)
    queue = open_job_queue("store", url)
    try:
        spec = ActionSpec(type="log")
        jobs = [
            Job.for_event(r.event, "big-orders", 0, spec, position=r.position) for r in recorded[1:]
        ]
        assert await queue.enqueue(jobs) == 2
        claimed = await queue.claim("w", 10, 30.0)
        assert len(claimed) == 2
        await queue.complete(claimed[0])
        await queue.fail(claimed[1], "boom", None)  # dead
        await results.record(claimed[0].key, event_id=claimed[0].event_id,
                             trigger_id="big-orders", action_index=0, action_type="log",
                             status="succeeded", duration_ms=1.5, attempts=1)  # fmt: skip
        await results.record(claimed[1].key, event_id=claimed[1].event_id,
                             trigger_id="big-orders", action_index=0, action_type="log",
                             status="dead", error="boom", attempts=1)  # fmt: skip
    finally:
        await results.close()
        await queue.close()

    status, page = await app.get("/triggers/results?limit=1", headers=RO)
    assert status == 200 and len(page["results"]) == 1 and page["next_cursor"], page
    assert page["results"][0]["status"] == "dead"  # newest first
    status, rest = await app.get(f"/triggers/results?limit=1&cursor={page['next_cursor']}",
                                 headers=RO)  # fmt: skip
    assert [r["status"] for r in rest["results"]] == ["succeeded"], rest
    status, only = await app.get("/triggers/results?status=succeeded", headers=RO)
    assert [r["key"] for r in only["results"]] == [claimed[0].key], only
    status, bad = await app.get("/triggers/results?status=great", headers=RO)
    assert status == 400 and bad["field"] == "status", bad

    status, dead = await app.get("/triggers/dlq", headers=RO)
    assert status == 200 and [j["key"] for j in dead["jobs"]] == [claimed[1].key], dead
    assert dead["jobs"][0]["error"] == "boom"

    status, figures = await app.get("/triggers/status", headers=RO)
    assert status == 200, figures
    conn = sqlite3.connect(db)
    try:
        stored = conn.execute("SELECT count(*) FROM tidings_events").fetchone()[0]
        matched = conn.execute("SELECT count(DISTINCT event_id) FROM action_results").fetchone()[0]
        by_status = dict(
            conn.execute("SELECT status, count(*) FROM action_results GROUP BY status").fetchall()
        )
        open_jobs = conn.execute(
            "SELECT count(*) FROM action_jobs WHERE state IN ('pending', 'running')"
        ).fetchone()[0]
    finally:
        conn.close()
    assert figures["ingestion"]["events_last_minute"] == stored == 3, figures
    assert figures["matching"]["events_last_hour"] == 3
    assert figures["matching"]["matched_events_last_hour"] == matched == 2
    assert figures["matching"]["match_rate_pct"] == round(200 / 3, 2)
    assert figures["actions"]["succeeded"] == by_status["succeeded"] == 1
    assert figures["actions"]["dead"] == by_status["dead"] == 1
    assert figures["queue"] == {"depth": open_jobs, "dead": 1}, figures
    assert figures["processing"]["head"] == recorded[-1].position
    assert figures["triggers"] == {"config": 1, "saved": 0}
    assert figures["process"]["running"] is True, figures  # the config trigger runs here

    status, text = await app.get("/metrics", headers=RO)
    assert status == 200
    assert 'tidings_triggers_action_results{status="dead"} 1.0' in text, text[-3000:]
    assert "tidings_triggers_dead_jobs 1.0" in text
    assert "tidings_triggers_match_rate 0.666" in text

    status, body = await app.post("/triggers/dlq/retry", {"key": "nope"}, headers=RW)
    assert status == 404, body
    status, body = await app.post("/triggers/dlq/retry", {}, headers=RO)
    assert status == 403, body
    status, body = await app.post("/triggers/dlq/retry", {}, headers=RW)
    assert status == 202 and body == {"retried": 1}, body
    status, dead = await app.get("/triggers/dlq", headers=RO)
    assert dead["jobs"] == [], dead
    await asyncio.sleep(0)


async def test_a_saved_trigger_runs_and_a_change_reaches_the_processor(
    serve: Start, store_url: str
) -> None:
    cfg = config(store_url)
    cfg.pop("triggers")  # no config triggers: the first saved one starts the processor
    app = await serve(cfg)
    assert app.service.triggers is None
    status, body = await app.post("/triggers", big(), headers=RW)
    assert status == 201, body
    control = {"id": "control", "pattern": "svtest.order.*", "actions": [{"type": "log"}]}
    status, body = await app.post("/triggers", control, headers=RW)
    assert status == 201, body
    assert app.service.triggers is not None

    async def results_of(event_id: str, count: int) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        for _ in range(600):  # 30 s
            status, page = await app.get(f"/triggers/results?event_id={event_id}", headers=RO)
            assert status == 200, page
            seen = page["results"]
            if len(seen) >= count and all(r["status"] == "succeeded" for r in seen):
                return seen
            await asyncio.sleep(0.05)
        raise AssertionError(f"results of {event_id}: expected {count} succeeded, saw {seen}")

    status, accepted = await app.post(
        "/events", {"type": "svtest.order.placed", "data": {"amount": 500}}, headers=RW
    )
    assert status == 202, accepted
    first = accepted["ids"][0]
    got = await results_of(first, 2)
    assert sorted(r["trigger_id"] for r in got) == ["big-orders", "control"], got

    status, body = await app.post("/triggers/big-orders/disable", headers=RW)
    assert status == 200 and body["enabled"] is False, body
    # the server's own processor sees its API's change at once (no 0.5 s wait)
    status, accepted = await app.post(
        "/events", {"type": "svtest.order.placed", "data": {"amount": 700}}, headers=RW
    )
    second = accepted["ids"][0]
    got = await results_of(second, 1)
    await asyncio.sleep(0.3)
    status, page = await app.get(f"/triggers/results?event_id={second}", headers=RO)
    assert [r["trigger_id"] for r in page["results"]] == ["control"], page


async def test_dlq_and_status_with_a_redis_queue(serve: Start, tmp_path: Path) -> None:
    queue_url = redis_url()
    cfg = config(f"sqlite:///{tmp_path / 'tidings.db'}")
    cfg["processor"] = {"queue": queue_url}
    cfg.pop("triggers")  # no processor: its workers would take the jobs made here
    app = await serve(cfg)
    assert app.service.triggers is None
    queue = RedisJobQueue(queue_url)
    try:
        recorded = await app.service.store.aappend(
            [Event(type="svtest.order.placed", source="t", data={"amount": n}) for n in (1, 2, 3)]
        )
        spec = ActionSpec(type="log")
        jobs = [Job.for_event(r.event, "t1", 0, spec, position=r.position) for r in recorded]
        assert await queue.enqueue(jobs) == 3
        claimed = await queue.claim("w", 1, 30.0)
        await queue.fail(claimed[0], "refused", None)

        status, dead = await app.get("/triggers/dlq", headers=RO)
        assert status == 200 and [j["key"] for j in dead["jobs"]] == [claimed[0].key], dead
        status, figures = await app.get("/triggers/status", headers=RO)
        assert figures["queue"] == {"depth": await queue.depth(), "dead": 1}, figures
        assert figures["queue"]["depth"] == 2
        status, body = await app.post("/triggers/dlq/retry", {"key": claimed[0].key}, headers=RW)
        assert status == 202 and body == {"retried": 1}, body
        assert await queue.state(claimed[0].key) == "pending"
        assert await queue.depth() == 3
    finally:
        await queue.drop()
        await queue.close()


async def test_if_match_refuses_a_change_made_against_an_old_version(serve: Start) -> None:
    app = await serve(config())
    status, made = await app.post("/triggers", big(), headers=RW)
    assert status == 201, made
    async with app.session.get(app.url + "/triggers/big-orders", headers=RO) as resp:
        etag = resp.headers["ETag"]
    assert etag == '"1"'
    status, body = await app.request(
        "PATCH", "/triggers/big-orders", {"description": "a"}, headers={**RW, "If-Match": etag}
    )
    assert status == 200 and body["version"] == 2, body
    # a second editor, still holding version 1, is refused and changes nothing
    status, body = await app.request(
        "PATCH", "/triggers/big-orders", {"description": "b"}, headers={**RW, "If-Match": etag}
    )
    assert status == 412 and body["field"] == "If-Match", body
    assert "at version 2, not 1" in body["detail"], body
    for method, path in [("DELETE", "/triggers/big-orders"),
                         ("POST", "/triggers/big-orders/disable")]:  # fmt: skip
        status, body = await app.request(method, path, headers={**RW, "If-Match": '"1"'})
        assert status == 412, (method, body)
    status, body = await app.request(
        "PUT", "/triggers/new-one", big("new-one"), headers={**RW, "If-Match": '"1"'}
    )
    assert status == 412 and "does not exist" in body["detail"], body
    status, body = await app.request(
        "PATCH", "/triggers/big-orders", {"description": "c"}, headers={**RW, "If-Match": "x"}
    )
    assert status == 400 and body["field"] == "If-Match", body
    status, one = await app.get("/triggers/big-orders", headers=RO)
    assert one["description"] == "a" and one["version"] == 2 and one["enabled"], one
    status, body = await app.request(
        "DELETE", "/triggers/big-orders", headers={**RW, "If-Match": '"2"'}
    )
    assert status == 204, body
