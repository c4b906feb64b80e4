"""Webhook delivery through `tidings serve`, against real local receivers.

Each rule of the delivery issue is one test: signing (checked with the reference
`standardwebhooks` package), retries with the same message id, timeouts, 410 Gone, 429 with
Retry-After, redirects not followed, the dead-letter queue and its replay, per-endpoint rate
limits, and a failing endpoint that must not slow a healthy one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec
import pytest
import yaml
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.server.conftest import Received, Receiver, Running
from tests.test_config import SEED_000_ADVANCED

Start = Callable[..., Awaitable[Running]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST = {"retry_delay": "0.05s", "max_delay": "0.2s", "jitter": 0, "timeout": "2s"}


def events_config(endpoints: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"events": {"enabled": True, **FAST, **extra, "endpoints": endpoints or {}}}


def webhook(name: str, url: str, **spec: Any) -> dict[str, Any]:
    return {"webhooks": {name: {"url": url, "events": ["**"], **spec}}}


async def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await _call(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


async def _call(check: Callable[[], Any]) -> Any:
    result = check()
    if asyncio.iscoroutine(result):
        result = await result
    return result


async def deliveries(app: Running, **query: str) -> list[dict[str, Any]]:
    status, body = await app.get("/deliveries", params=query)
    assert status == 200, body
    rows: list[dict[str, Any]] = body["deliveries"]
    return rows


async def one_event(app: Running, type_: str = "shop.order.placed", **data: Any) -> str:
    status, body = await app.post("/events", {"type": type_, "source": "test", "data": data})
    assert status == 202, body
    ids: list[str] = body["ids"]
    return ids[0]


# ---- the seed 000 configuration, as written ------------------------------------------------


async def test_seed_000_advanced_config_runs_as_written(serve: Start) -> None:
    config = yaml.safe_load(SEED_000_ADVANCED)
    app = await serve(config)
    status, body = await app.get("/endpoints")
    assert status == 200
    urls = {ep["url"]: set(ep["events"]) for ep in body["endpoints"]}
    assert len(urls) == 7  # each URL once, with every type it was listed under
    assert urls["http://audit-service:8080/events"] == {
        "component_registered", "component_verified", "pairing_initiated", "pairing_completed",
        "lct_created", "trust_tensor_created", "energy_transfer",
    }  # fmt: skip
    await one_event(app, "energy_transfer", amount=5)
    rows = await deliveries(app)
    assert sorted(r["endpoint_id"] for r in rows) == sorted(
        ep["id"] for ep in body["endpoints"] if "energy_transfer" in ep["events"]
    )


async def test_seed_000_payload_shape_reaches_the_receiver(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve(events_config({"component_registered": [rec.url]}))
    event_id = await one_event(
        app, "component_registered", component_id="COMP-alice-1", creator="alice", tx_hash="ABC"
    )
    await rec.wait_for(1)
    body = msgspec.json.decode(rec.requests[0].body)
    assert set(body) == {"event_type", "timestamp", "data"}
    assert body["event_type"] == "component_registered"
    assert body["timestamp"].endswith("Z")
    assert body["data"] == {"component_id": "COMP-alice-1", "creator": "alice", "tx_hash": "ABC"}
    assert rec.requests[0].headers["tidings-event-id"] == event_id


async def test_disabled_by_default_until_enabled(serve: Start, receiver: MakeReceiver) -> None:
    rec = await receiver()
    app = await serve({"events": {"endpoints": {"x.y": [rec.url]}}})
    await one_event(app, "x.y")
    await asyncio.sleep(0.3)
    assert rec.requests == []
    assert await deliveries(app) == []


# ---- signing -------------------------------------------------------------------------------


async def test_requests_verify_with_the_standard_webhooks_reference(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve(events_config(format="cloudevents", **webhook("a", rec.url, secret=SECRET)))
    event_id = await one_event(app, "shop.order.placed", total=3)
    await rec.wait_for(1)
    got = rec.requests[0]
    payload = Webhook(SECRET).verify(got.body, got.headers)
    assert payload["id"] == event_id and payload["data"] == {"total": 3}
    assert got.headers["Content-Type"] == "application/cloudevents+json"
    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook(SECRET).verify(got.body.replace(b"3", b"4"), got.headers)


async def test_rotated_secret_signs_with_both_until_the_next_rotation(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve(events_config(allow_networks=["127.0.0.0/8"]))
    status, ep = await app.post("/endpoints", {"url": rec.url, "events": ["**"]})
    assert status == 201, ep
    old = ep["secret"]
    assert "secrets" not in ep and ep["signed"] is True
    status, rotated = await app.post(f"/endpoints/{ep['id']}/rotate-secret")
    assert status == 200
    new = rotated["secret"]
    assert new != old
    status, shown = await app.get(f"/endpoints/{ep['id']}")
    assert old not in str(shown) and new not in str(shown), "the API never shows a secret again"
    await one_event(app)
    await rec.wait_for(1)
    got = rec.requests[0]
    Webhook(old).verify(got.body, got.headers)
    Webhook(new).verify(got.body, got.headers)
    assert len(got.headers["webhook-signature"].split()) == 2


# ---- retries, status codes and the dead-letter queue ---------------------------------------


@pytest.mark.parametrize("sender_process", [False, True], ids=["in-process", "sender-process"])
async def test_a_flapping_receiver_gets_the_same_message_id_until_it_succeeds(
    serve: Start, receiver: MakeReceiver, sender_process: bool
) -> None:
    async def flap(req: Received, n: int) -> web.StreamResponse:
        return web.Response(status=503 if n <= 2 else 200)

    rec = await receiver(flap)
    app = await serve(
        {**events_config({"shop.order.*": [rec.url]}), "server": {"sender_process": sender_process}}
    )
    assert (type(app.service.worker._sender).__name__ == "ProcessSender") is sender_process
    await one_event(app)
    await rec.wait_for(3)
    ids = rec.message_ids()
    assert len(set(ids)) == 1 and ids[0].startswith("")
    assert [r.headers["tidings-attempt"] for r in rec.requests] == ["1", "2", "3"]
    await wait_until(lambda: _state(app, "delivered"), what="the delivery to be marked delivered")
    (row,) = await deliveries(app)
    status, detail = await app.get(f"/deliveries/{row['id']}")
    assert status == 200
    log = detail["attempt_log"]
    assert [a["status_code"] for a in log] == [503, 503, 200]
    assert all(a["duration"] >= 0 and _epoch(a["started_at"]) > 0 for a in log)


def _epoch(rfc3339: str) -> float:
    """Seconds from an API time (RFC 3339, UTC, ``Z``)."""
    assert rfc3339.endswith("Z"), rfc3339
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


async def _state(app: Running, state: str, count: int = 1) -> bool:
    return len(await deliveries(app, state=state)) >= count


async def test_a_receiver_that_times_out_is_retried_then_dead_and_replayable(
    serve: Start, receiver: MakeReceiver
) -> None:
    hang = asyncio.Event()

    async def slow(req: Received, n: int) -> web.StreamResponse:
        if not hang.is_set():
            await asyncio.sleep(1.0)
        return web.Response(status=200)

    rec = await receiver(slow)
    app = await serve(events_config(max_retries=1, **webhook("slow", rec.url, timeout="0.2s")))
    await one_event(app)
    await wait_until(lambda: _state(app, "dead"), what="a dead delivery")
    (dead,) = await deliveries(app, state="dead")
    status, detail = await app.get(f"/deliveries/{dead['id']}")
    assert [a["error"] for a in detail["attempt_log"]] == ["timed out after 0.2s"] * 2
    # Replay it from the DLQ: same message id, delivered once the receiver is fast again.
    hang.set()
    status, _ = await app.post(f"/deliveries/{dead['id']}/retry")
    assert status == 202
    await wait_until(lambda: _state(app, "delivered"), what="the replayed delivery")
    assert rec.message_ids()[-1] == dead["id"]


async def test_410_gone_disables_the_endpoint(serve: Start, receiver: MakeReceiver) -> None:
    async def gone(req: Received, n: int) -> web.StreamResponse:
        return web.Response(status=410)

    rec = await receiver(gone)
    app = await serve(events_config(**webhook("gone", rec.url)))
    await one_event(app)
    await wait_until(lambda: _state(app, "dead"), what="the 410 delivery to be dead")
    status, ep = await app.get("/endpoints/gone")
    assert status == 200
    assert ep["enabled"] is False and "410" in ep["disabled_reason"]
    await one_event(app)
    await asyncio.sleep(0.3)
    assert len(rec.requests) == 1, "a disabled endpoint gets nothing more"


async def test_429_retry_after_is_honoured(serve: Start, receiver: MakeReceiver) -> None:
    async def limited(req: Received, n: int) -> web.StreamResponse:
        if n == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=200)

    rec = await receiver(limited)
    app = await serve(events_config(**webhook("rl", rec.url)))
    await one_event(app)
    await rec.wait_for(2, timeout=5)
    gap = rec.requests[1].at - rec.requests[0].at
    assert gap >= 0.95, f"retried {gap:.2f}s later, before Retry-After: 1"


async def test_redirects_are_failures_and_not_followed(
    serve: Start, receiver: MakeReceiver
) -> None:
    target = await receiver()

    async def moved(req: Received, n: int) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": target.url})

    rec = await receiver(moved)
    app = await serve(events_config(max_retries=0, **webhook("redirect", rec.url)))
    await one_event(app)
    await wait_until(lambda: _state(app, "dead"), what="the redirected delivery to fail")
    (dead,) = await deliveries(app, state="dead")
    assert "302" in dead["last_error"] and "redirect" in dead["last_error"]
    assert target.requests == []


async def test_retry_all_dead_of_an_endpoint(serve: Start, receiver: MakeReceiver) -> None:
    healthy = asyncio.Event()

    async def down(req: Received, n: int) -> web.StreamResponse:
        return web.Response(status=200 if healthy.is_set() else 500)

    rec = await receiver(down)
    app = await serve(events_config(max_retries=0, **webhook("down", rec.url)))
    for _ in range(3):
        await one_event(app)
    await wait_until(lambda: _state(app, "dead", 3), what="three dead deliveries")
    healthy.set()
    status, body = await app.post("/endpoints/down/retry-dead")
    assert (status, body["retried"]) == (202, 3)
    await wait_until(lambda: _state(app, "delivered", 3), what="three redelivered")


# ---- per endpoint: rate limit, isolation ---------------------------------------------------


async def test_rate_limit_paces_one_endpoint(serve: Start, receiver: MakeReceiver) -> None:
    rec = await receiver()
    app = await serve(events_config(**webhook("paced", rec.url, rate_limit=10, burst=1)))
    status, _ = await app.post(
        "/events", [{"type": "a.b", "source": "t", "data": {"n": i}} for i in range(6)]
    )
    assert status == 202
    await rec.wait_for(6)
    spread = rec.requests[-1].at - rec.requests[0].at
    assert spread >= 0.45, f"6 requests at 10/s took {spread:.2f}s"


async def test_a_hanging_endpoint_does_not_slow_a_healthy_one(
    serve: Start, receiver: MakeReceiver
) -> None:
    async def hang(req: Received, n: int) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(status=200)

    bad = await receiver(hang)
    good = await receiver()
    app = await serve(
        {
            "events": {
                "enabled": True,
                **FAST,
                "webhooks": {
                    "bad": {"url": bad.url, "events": ["**"], "timeout": "3s", "max_in_flight": 2},
                    "good": {"url": good.url, "events": ["**"]},
                },
            },
            "server": {"workers": 8},
        }
    )
    started = time.monotonic()
    status, _ = await app.post(
        "/events", [{"type": "a.b", "source": "t", "data": {"n": i}} for i in range(40)]
    )
    assert status == 202
    await good.wait_for(40, timeout=3)
    assert time.monotonic() - started < 3, "the healthy endpoint waited on the hanging one"
    assert len(bad.requests) <= 2, "max_in_flight bounds the hanging endpoint"


# ---- the API: input, security, operations --------------------------------------------------


async def test_bad_events_get_a_clear_error_naming_the_field(serve: Start) -> None:
    app = await serve()
    status, body = await app.post("/events", {"source": "x"})
    assert status == 400 and body["field"] == "type"
    status, body = await app.post("/events", [{"type": "a", "time": "yesterday"}])
    assert status == 400 and body["field"].startswith("[0].") and "time" in body["field"]
    json_type = {"Content-Type": "application/json"}
    async with app.session.post(app.url + "/events", data=b"{not json", headers=json_type) as resp:
        assert resp.status == 400 and "JSON" in (await resp.json(content_type=None))["detail"]
    status, body = await app.post("/events", [])
    assert status == 400


async def test_body_and_batch_limits(serve: Start) -> None:
    app = await serve({"server": {"max_body_bytes": 2048, "max_batch": 3}})
    status, body = await app.post("/events", {"type": "a", "data": {"blob": "x" * 4096}})
    assert status == 413 and "limit" in body["detail"]
    status, body = await app.post("/events", [{"type": "a"}] * 4)
    assert status == 413 and "3" in body["detail"]


async def test_queue_size_bounds_pending_deliveries(serve: Start, receiver: MakeReceiver) -> None:
    async def down(req: Received, n: int) -> web.StreamResponse:
        return web.Response(status=500)

    rec = await receiver(down)
    app = await serve(
        events_config({"a.*": [rec.url]}, queue_size=5, retry_delay="1h", max_delay="1h")
    )
    status, _ = await app.post("/events", [{"type": "a.b"}] * 5)
    assert status == 202
    status, body = await app.post("/events", {"type": "a.b"})
    assert status == 503 and "queue" in body["detail"]
    status, got = await app.get("/events", params={"type": "a.b"})
    assert len(got["events"]) == 5, "a refused event is not half-written"


async def test_ssrf_guard_on_api_endpoints(serve: Start, receiver: MakeReceiver) -> None:
    rec = await receiver()
    app = await serve()
    for url in (rec.url, "http://169.254.169.254/latest/meta-data", "http://[::1]:9/x"):
        status, body = await app.post("/endpoints", {"url": url})
        assert status == 422 and body["field"] == "url", (url, body)
    status, body = await app.post("/endpoints", {"url": "ftp://example.com/x"})
    assert status == 422


async def test_allow_networks_opens_the_guard(serve: Start, receiver: MakeReceiver) -> None:
    rec = await receiver()
    app = await serve(events_config(allow_networks=["127.0.0.0/8"]))
    status, ep = await app.post("/endpoints", {"url": rec.url, "events": ["shop.order.*"]})
    assert status == 201, ep
    await one_event(app)
    await rec.wait_for(1)


async def test_api_key_is_required_when_set(serve: Start) -> None:
    app = await serve({"server": {"api_key": "k-123"}})
    status, _ = await app.get("/endpoints")
    assert status == 401
    status, _ = await app.get("/endpoints", headers={"Authorization": "Bearer k-123"})
    assert status == 200
    status, _ = await app.get("/endpoints", headers={"X-API-Key": "k-123"})
    assert status == 200
    status, _ = await app.get("/health")
    assert status == 200, "health stays open for probes"


async def test_endpoint_crud(serve: Start, receiver: MakeReceiver) -> None:
    rec = await receiver()
    app = await serve(events_config(allow_networks=["127.0.0.0/8"]))
    status, ep = await app.post(
        "/endpoints", {"url": rec.url, "events": ["a.*"], "headers": {"X-T": "1"}}
    )
    assert status == 201
    status, upd = await app.request("PATCH", f"/endpoints/{ep['id']}", {"events": ["b.*"]})
    assert status == 200 and upd["events"] == ["b.*"]
    status, body = await app.request("PATCH", f"/endpoints/{ep['id']}", {"evnts": ["b.*"]})
    assert status == 422 and "evnts" in body["detail"]
    status, dis = await app.post(f"/endpoints/{ep['id']}/disable")
    assert status == 200 and dis["enabled"] is False
    await one_event(app, "b.c")
    await asyncio.sleep(0.2)
    assert rec.requests == []
    status, _ = await app.post(f"/endpoints/{ep['id']}/enable")
    await one_event(app, "b.c")
    await rec.wait_for(1)
    assert rec.requests[0].headers["X-T"] == "1"
    status, _ = await app.request("DELETE", f"/endpoints/{ep['id']}")
    assert status == 204
    status, _ = await app.get(f"/endpoints/{ep['id']}")
    assert status == 404


async def test_replay_since_creates_new_deliveries(serve: Start, receiver: MakeReceiver) -> None:
    rec = await receiver()
    app = await serve(events_config({"a.*": [rec.url]}))
    await one_event(app, "a.b")
    await rec.wait_for(1)
    status, body = await app.post("/replay", {"since": "2000-01-01T00:00:00Z"})
    assert (status, body["deliveries"]) == (202, 1)
    await rec.wait_for(2)
    assert rec.requests[0].headers["webhook-id"] != rec.requests[1].headers["webhook-id"]
    assert {r.headers["tidings-event-id"] for r in rec.requests} == {
        rec.requests[0].headers["tidings-event-id"]
    }


async def test_health_and_metrics(serve: Start, receiver: MakeReceiver) -> None:
    rec = await receiver()
    app = await serve(events_config({"a.*": [rec.url]}))
    await one_event(app, "a.b")
    await rec.wait_for(1)
    await wait_until(lambda: _state(app, "delivered"), what="delivered")
    status, health = await app.get("/health")
    assert status == 200 and health["status"] == "ok"
    assert health["queue"]["pending"] == 0 and health["workers"]["alive"] is True
    status, text = await app.get("/metrics")
    assert status == 200
    assert "tidings_events_published_total 1.0" in text
    assert "tidings_webhook_delivered_total{endpoint=" in text
    assert "tidings_webhook_delivery_latency_seconds_bucket" in text


async def test_a_stalled_worker_makes_health_fail(
    serve: Start, receiver: MakeReceiver, monkeypatch: Any
) -> None:
    rec = await receiver()
    app = await serve(events_config({"a.*": [rec.url]}))
    stuck = asyncio.Event()

    async def never(*args: Any, **kwargs: Any) -> list[Any]:
        await stuck.wait()  # a claim that never returns: the database hangs
        return []

    monkeypatch.setattr(app.service.queue, "aclaim", never)
    monkeypatch.setattr("tidings.server.service.STALLED_AFTER", 0.3)
    app.service.worker.wake()
    await asyncio.sleep(0.6)
    status, health = await app.get("/health")
    assert status == 503 and health["workers"]["alive"] is False
    stuck.set()


async def test_config_reload_keeps_queued_deliveries(serve: Start, receiver: MakeReceiver) -> None:
    first, second = await receiver(), await receiver()
    config = events_config({"a.*": [first.url]}, retry_delay="1h", max_delay="1h")
    app = await serve(config)
    await app.service.worker.stop(1)  # hold deliveries in the queue across the reload
    await one_event(app, "a.b")
    written = yaml.safe_load(app.config.read_text())
    written["events"]["endpoints"]["a.*"].append(second.url)
    app.config.write_text(yaml.safe_dump(written))
    assert await app.service.reload_config()
    status, body = await app.get("/endpoints")
    assert status == 200
    assert {ep["url"] for ep in body["endpoints"] if ep["enabled"]} == {first.url, second.url}
    assert len(await deliveries(app, state="pending")) == 1, "queued delivery kept"


async def test_gzip_compression_signs_the_decoded_body(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()  # aiohttp decodes Content-Encoding before the handler reads
    app = await serve(
        events_config(
            **webhook("zip", rec.url, secret=SECRET, compress="gzip"), format="cloudevents"
        )
    )
    await one_event(app, "a.big", blob="x" * 4000)
    await one_event(app, "a.small", n=1)
    await rec.wait_for(2)
    by_type = {r.headers["tidings-event-type"]: r for r in rec.requests}
    big, small = by_type["a.big"], by_type["a.small"]
    assert big.headers["Content-Encoding"] == "gzip"
    assert int(big.headers["Content-Length"]) < 1000, "sent compressed"
    Webhook(SECRET).verify(big.body, big.headers)  # the body the handler sees
    assert msgspec.json.decode(big.body)["data"]["blob"] == "x" * 4000
    assert "Content-Encoding" not in small.headers, "small bodies are sent as they are"


async def test_a_sender_process_delivers_and_its_death_loses_nothing(
    serve: Start, receiver: MakeReceiver
) -> None:
    """``server.sender_process``: requests go out from a child; killing it mid-flight turns its
    requests into failed attempts, retried with the same message id by a new child."""
    slow = asyncio.Event()

    async def sometimes_slow(req: Received, n: int) -> web.StreamResponse:
        if not slow.is_set():
            await asyncio.sleep(0.5)
        return web.Response(status=200)

    rec = await receiver(sometimes_slow)
    app = await serve(
        {
            **events_config(**webhook("p", rec.url, secret=SECRET)),
            "server": {"sender_process": True},
        }
    )
    sender = app.service.worker._sender
    assert type(sender).__name__ == "ProcessSender"
    status, _ = await app.post("/events", [{"type": "a.b", "data": {"n": i}} for i in range(5)])
    assert status == 202
    await rec.wait_for(5)  # all five requests are in flight, the receiver is holding them
    child = sender._proc
    assert child is not None and child.pid != os.getpid()
    os.kill(child.pid, signal.SIGKILL)
    slow.set()
    await wait_until(
        lambda: _state(app, "delivered", 5), timeout=4, what="all five delivered after the kill"
    )
    ids = rec.message_ids()
    assert len(set(ids)) == 5 and len(ids) >= 10, "each message sent again, with the same id"
    for r in rec.requests:
        Webhook(SECRET).verify(r.body, r.headers)


async def test_a_changed_config_file_is_picked_up_without_a_signal(
    serve: Start, receiver: MakeReceiver
) -> None:
    first, second = await receiver(), await receiver()
    app = await serve(events_config({"a.*": [first.url]}))
    written = yaml.safe_load(app.config.read_text())
    written["events"]["endpoints"]["a.*"].append(second.url)
    app.config.write_text(yaml.safe_dump(written))

    async def both_enabled() -> bool:
        _, body = await app.get("/endpoints")
        return {ep["url"] for ep in body["endpoints"] if ep["enabled"]} == {first.url, second.url}

    await wait_until(both_enabled, timeout=8, what="the file watcher to reload the config")
    await one_event(app, "a.b")
    await second.wait_for(1)


async def test_a_repeated_event_id_is_a_conflict_not_an_outage(serve: Start) -> None:
    app = await serve()
    event = {"id": "evt-1", "type": "a.b", "data": {"n": 1}}
    status, _ = await app.post("/events", event)
    assert status == 202
    status, body = await app.post("/events", [{"type": "a.b"}, event])
    assert status == 409 and body["field"] == "id" and "evt-1" in body["detail"]
    status, got = await app.get("/events", params={"type": "a.b"})
    assert len(got["events"]) == 1, "the batch with the repeat wrote nothing"


async def test_an_invalid_config_on_reload_is_refused_and_the_running_one_stays(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve(events_config({"a.*": [rec.url]}))
    app.config.write_text("events:\n  enabled: yes-please\n")
    assert await app.service.reload_config() is False
    assert app.service.settings.events.enabled is True
    await one_event(app, "a.b")
    await rec.wait_for(1)
