"""The webhook queue's bound (`events.queue_size`) through `tidings serve`: what POST /events
says when it is full, what /health says before and then, and POST /replay keeping within it.

Deliveries are held open by a receiver that always fails with retries an hour apart, so each
accepted delivery stays pending for the whole test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tests.server.conftest import Received, Receiver, Running
from tests.server.test_webhooks import deliveries, events_config, wait_until
from tidings.webhooks.endpoint import Endpoint

Start = Callable[..., Awaitable[Running]]
MakeReceiver = Callable[..., Awaitable[Receiver]]
SINCE = "2000-01-01T00:00:00Z"


async def down(req: Received, n: int) -> web.StreamResponse:
    return web.Response(status=500)


async def failing_service(serve: Start, receiver: MakeReceiver, queue_size: int) -> Running:
    rec = await receiver(down)
    config = events_config(
        {"a.*": [rec.url]}, queue_size=queue_size, retry_delay="1h", max_delay="1h"
    )
    return await serve(config)


async def open_count(app: Running) -> int:
    rows = await deliveries(app, limit="1000")
    return sum(1 for r in rows if r["state"] in ("pending", "delivering"))


async def test_a_full_queue_names_events_queue_size_and_health_says_degraded(
    serve: Start, receiver: MakeReceiver
) -> None:
    app = await failing_service(serve, receiver, queue_size=10)
    status, health = await app.get("/health")
    assert (status, health["status"], health["reasons"]) == (200, "ok", []), health

    status, _ = await app.post("/events", [{"type": "a.b"}] * 8)
    assert status == 202
    status, health = await app.get("/health")
    assert health["status"] == "ok", "80% is not yet degraded"

    status, _ = await app.post("/events", {"type": "a.b"})
    assert status == 202
    status, health = await app.get("/health")
    assert status == 200 and health["status"] == "degraded", health
    (reason,) = health["reasons"]
    assert "90% full" in reason and "events.queue_size=10" in reason, reason

    status, _ = await app.post("/events", {"type": "a.b"})
    assert status == 202
    status, body = await app.post("/events", {"type": "a.b"})
    assert status == 503, body
    assert "events.queue_size" in body["detail"] and "max_pending" not in body["detail"], body
    status, health = await app.get("/health")
    assert status == 200 and health["status"] == "degraded", health
    assert health["reasons"][0].startswith("webhook queue full: 10 deliveries"), health


async def test_replay_keeps_within_the_bound_and_live_events_still_get_in(
    serve: Start, receiver: MakeReceiver
) -> None:
    """queue_size 10: a replay may fill 8 (80%), the rest is kept for live events. A replay
    that does not fit is refused whole; a dry run counts per endpoint and writes nothing."""
    app = await failing_service(serve, receiver, queue_size=10)
    status, _ = await app.post("/events", [{"type": "b.x", "data": {"n": i}} for i in range(6)])
    assert status == 202  # stored, routed nowhere yet
    rec = await receiver(down)
    await asyncio.to_thread(
        app.service.queue.save_endpoint,
        Endpoint(id="all", url=rec.url, retry_delay=3600, max_delay=3600, jitter=0),
    )
    await app.service.endpoints_changed()

    status, body = await app.post("/replay", {"since": SINCE, "dry_run": True})
    assert (status, body) == (200, {"dry_run": True, "deliveries": 6, "per_endpoint": {"all": 6}})
    assert await open_count(app) == 0, "a dry run writes nothing"

    status, body = await app.post("/replay", {"since": SINCE})
    assert (status, body) == (202, {"deliveries": 6}), body
    await wait_until(lambda: _attempted(app, 6), what="the replayed deliveries attempted")

    status, body = await app.post("/replay", {"since": SINCE})
    assert status == 503, body
    error = body["detail"]
    assert "would create 6 deliveries" in error and "room for 2" in error, error
    assert "events.queue_size=10" in error and "tidings replay" in error, error
    assert await open_count(app) == 6, "a refused replay writes nothing"

    status, body = await app.post("/events", {"type": "c.x"})
    assert status == 202 and body["deliveries"] == 1, "live events still get in"
    status, body = await app.post("/replay", {"dry_run": "yes", "since": SINCE})
    assert status == 400 and body["field"] == "dry_run", body


async def _attempted(app: Running, n: int) -> bool:
    rows: list[dict[str, Any]] = await deliveries(app, state="pending")
    return sum(1 for r in rows if r["attempts"] >= 1) >= n
