"""Replay jobs: ``POST /replays`` answers 202 with the job's URL, the job redelivers in the
background and ``GET /replays/{id}`` shows its progress to the end."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from tests.server.conftest import Receiver, Running
from tests.server.test_webhooks import events_config, wait_until

Start = Callable[..., Awaitable[Running]]
MakeReceiver = Callable[..., Awaitable[Receiver]]


async def test_a_replay_job_redelivers_and_reports_progress(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve(events_config(allow_networks=["127.0.0.0/8"]))
    status, ep = await app.post("/endpoints", {"url": rec.url, "events": ["rj.*"]})
    assert status == 201, ep
    status, body = await app.post("/events", [{"type": "rj.a"}, {"type": "rj.b"}, {"type": "x"}])
    assert status == 202, body
    await rec.wait_for(2)

    async with app.session.post(
        app.url + "/replays", json={"since": "2000-01-01T00:00:00Z", "types": ["rj.*"]}
    ) as resp:
        assert resp.status == 202, await resp.text()
        job = await resp.json()
        assert resp.headers["Location"] == job["url"] == f"/replays/{job['id']}", job
    assert job["state"] in ("running", "done") and job["types"] == ["rj.*"], job

    seen: list[dict[str, Any]] = []

    async def finished() -> bool:
        status, now = await app.get(job["url"])
        assert status == 200, now
        seen.append(now)
        return bool(now["state"] != "running")

    await wait_until(finished, 30, "the replay job to finish")
    done = seen[-1]
    assert done["state"] == "done", seen
    assert (done["events_total"], done["events_read"], done["deliveries"]) == (2, 2, 2), done
    assert done["progress"] == 1.0 and done["finished_at"] is not None, done
    await rec.wait_for(4, timeout=30)

    status, listed = await app.get("/replays")
    assert status == 200 and [j["id"] for j in listed["replays"]] == [job["id"]], listed


async def test_replay_job_input_is_checked(serve: Start) -> None:
    app = await serve()
    for body, field in [
        ({}, "since"),
        ({"since": "soon"}, "since"),
        ({"since": "2026-01-01T00:00:00Z", "types": "a.*"}, "types"),
        ({"since": "2026-01-01T00:00:00Z", "types": ["a..b"]}, "types"),
        ({"since": "2026-01-01T00:00:00Z", "speed": 2}, "speed"),
    ]:
        status, problem = await app.post("/replays", body)
        assert status == 400 and problem["field"] == field, (body, problem)
    status, problem = await app.get("/replays/rp_nope")
    assert status == 404 and "rp_nope" in problem["detail"], problem
    started = time.monotonic()
    status, body = await app.post("/replay", {"since": "2026-01-01T00:00:00Z", "dry_run": True})
    assert status == 200 and body["dry_run"] is True, "POST /replay still works"
    assert time.monotonic() - started < 10
