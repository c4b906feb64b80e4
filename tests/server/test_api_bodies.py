"""Request bodies of the HTTP API: content types (no cross-site posts), JSON that is too deep or
not valid Unicode, CloudEvents attributes, and how times come back."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from tests.server.conftest import Receiver, Running
from tests.server.test_webhooks import events_config, wait_until

Start = Callable[..., Awaitable[Running]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

JSON = ("application/json", "application/problem+json")
EVENT = b'{"type": "a.b", "source": "test", "data": {"n": 1}}'


async def raw_post(
    app: Running, path: str, body: bytes, content_type: str | None, method: str = "POST"
) -> tuple[int, Any]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with app.session.request(method, app.url + path, data=body, headers=headers) as resp:
        payload = await resp.json(content_type=None) if resp.content_type in JSON else None
        return resp.status, payload


# ---- Content-Type: JSON only, so a web page cannot post to a keyless server ----------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "application/json-seq",
        "application/json; charset=latin-1",
        None,
    ],
)
async def test_post_events_needs_a_json_content_type(
    serve: Start, content_type: str | None
) -> None:
    app = await serve()
    status, body = await raw_post(app, "/events", EVENT, content_type)
    assert status == 415, body
    assert "application/json" in body["detail"], body
    assert "application/cloudevents+json" in body["detail"], body
    assert "application/cloudevents-batch+json" in body["detail"], body
    status, got = await app.get("/events")
    assert got["events"] == [], "a refused request stores nothing"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", EVENT),
        ("application/json; charset=utf-8", EVENT),
        ("Application/JSON;Charset=UTF-8", EVENT),
        ("application/cloudevents+json", EVENT),
        ("application/cloudevents-batch+json", b"[" + EVENT + b"," + EVENT + b"]"),
    ],
)
async def test_post_events_accepts_the_json_types(
    serve: Start, content_type: str, body: bytes
) -> None:
    app = await serve()
    status, answer = await raw_post(app, "/events", body, content_type)
    assert status == 202, answer


async def test_every_json_body_route_needs_the_content_type(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve(events_config({"a.*": [rec.url]}, allow_networks=["127.0.0.0/8"]))
    endpoint = msgspec.json.encode({"url": rec.url})
    status, body = await raw_post(app, "/endpoints", endpoint, "text/plain")
    assert status == 415 and "application/json" in body["detail"], body
    status, ep = await raw_post(app, "/endpoints", endpoint, "application/json")
    assert status == 201, ep
    path = f"/endpoints/{ep['id']}"
    status, body = await raw_post(app, path, b'{"events": ["x.*"]}', "text/plain", "PATCH")
    assert status == 415, body
    status, body = await raw_post(app, path, b'{"events": ["x.*"]}', "application/json", "PATCH")
    assert status == 200 and body["events"] == ["x.*"], body
    since = b'{"since": "2000-01-01T00:00:00Z"}'
    status, body = await raw_post(app, "/replay", since, "application/x-www-form-urlencoded")
    assert status == 415, body
    status, body = await raw_post(app, "/replay", since, "application/json")
    assert status == 202, body


async def test_body_less_posts_need_no_content_type(serve: Start, receiver: MakeReceiver) -> None:
    rec = await receiver()
    app = await serve(events_config({"a.*": [rec.url]}, allow_networks=["127.0.0.0/8"]))
    status, ep = await app.post("/endpoints", {"url": rec.url})
    assert status == 201, ep
    for action, expected in (("disable", 200), ("enable", 200), ("rotate-secret", 200)):
        status, body = await raw_post(app, f"/endpoints/{ep['id']}/{action}", b"", None)
        assert status == expected, (action, body)
    status, body = await raw_post(app, f"/endpoints/{ep['id']}/retry-dead", b"", None)
    assert status == 202, body
    status, body = await raw_post(app, "/deliveries/nope/retry", b"", None)
    assert status == 404, body


# ---- JSON too deep, and text that is not valid Unicode ---------------------------------------


def nested(depth: int) -> bytes:
    """An event whose whole body is ``depth`` levels deep (the envelope is the first)."""
    return b'{"type": "a.b", "data": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("depth", [65, 990, 5000, 200_000])
async def test_deep_json_is_a_400_naming_the_limit(
    serve: Start, caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    app = await serve({"server": {"max_body_bytes": 1_000_000}})
    caplog.set_level(logging.WARNING)
    status, body = await raw_post(app, "/events", nested(depth), "application/json")
    assert status == 400, body
    assert "64" in body["detail"] and "nest" in body["detail"], body
    status, body = await raw_post(app, "/endpoints", b"[" * depth, "application/json")
    assert status == 400 and "64" in body["detail"], body
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert "Traceback" not in caplog.text


async def test_json_at_the_depth_limit_is_accepted(serve: Start) -> None:
    app = await serve()
    status, body = await raw_post(app, "/events", nested(64), "application/json")
    assert status == 202, body
    # brackets inside strings are text, not nesting
    text = b'{"type": "a.b", "data": {"s": "' + b"[{" * 500 + b'\\"[["}}'
    status, body = await raw_post(app, "/events", text, "application/json")
    assert status == 202, body


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"type": "a.b", "data": "\\ud800"}', "lone surrogate \\ud800 at byte 25"),
        (b'{"type": "a.b", "data": "x\\udc00y"}', "lone surrogate \\udc00 at byte 26"),
        (b'{"type": "a.b", "data": "\\ud800\\u0041"}', "lone surrogate \\ud800 at byte 25"),
        (b'{"type": "a.b", "data": "\xed\xa0\x80"}', "invalid UTF-8 at byte 25"),
        (b'{"type": "a.b", "data": "caf\xe9"}', "invalid UTF-8 at byte 28"),
    ],
)
async def test_invalid_unicode_says_what_and_where(serve: Start, raw: bytes, words: str) -> None:
    app = await serve()
    status, body = await raw_post(app, "/events", raw, "application/json")
    assert status == 400, body
    assert words in body["detail"], body
    assert "truncated" not in body["detail"], body
    status, body = await raw_post(app, "/replay", raw, "application/json")
    assert status == 400 and words in body["detail"], body


async def test_an_escaped_surrogate_pair_and_escaped_backslashes_are_fine(serve: Start) -> None:
    app = await serve()
    raw = b'{"type": "a.b", "data": ["\\ud83d\\ude00", "\\\\ud800"]}'
    status, body = await raw_post(app, "/events", raw, "application/json")
    assert status == 202, body
    status, got = await app.get("/events")
    assert got["events"][0]["event"]["data"] == ["\U0001f600", "\\ud800"]


async def test_truncated_json_still_says_so(serve: Start) -> None:
    app = await serve()
    status, body = await raw_post(app, "/events", b'{"type": "a.b"', "application/json")
    assert status == 400 and "truncated" in body["detail"], body


# ---- CloudEvents attributes ----------------------------------------------------------------


async def test_a_specversion_other_than_1_0_is_refused(serve: Start) -> None:
    app = await serve()
    status, body = await app.post("/events", {"type": "a.b", "specversion": "0.3"})
    assert (status, body["field"]) == (400, "specversion"), body
    assert "1.0" in body["detail"] and "0.3" in body["detail"], body
    status, body = await app.post(
        "/events", [{"type": "a.b", "specversion": "1.0"}, {"type": "a.b", "specversion": 1}]
    )
    assert (status, body["field"]) == (400, "[1].specversion"), body
    status, got = await app.get("/events")
    assert got["events"] == [], "a refused batch stores nothing"


async def test_extension_attributes_round_trip_through_the_api(serve: Start) -> None:
    app = await serve()
    extensions = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "partitionkey": "order-17",
        "myext": "value",
    }
    status, body = await app.post("/events", {"type": "a.b", "source": "t", **extensions})
    assert status == 202, body
    status, got = await app.get("/events", params={"type": "a.b"})
    event = got["events"][0]["event"]
    assert {k: event.get(k) for k in extensions} == extensions, event


# ---- times in deliveries are RFC 3339 --------------------------------------------------------

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def parse(text: str) -> datetime:
    assert RFC3339.fullmatch(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_delivery_times_are_rfc_3339_utc(serve: Start, receiver: MakeReceiver) -> None:
    rec = await receiver()
    app = await serve(events_config({"a.*": [rec.url]}))
    before = datetime.now(UTC).replace(microsecond=0)
    status, body = await app.post("/events", {"type": "a.b"})
    assert status == 202, body
    await rec.wait_for(1)

    async def delivered() -> list[dict[str, Any]]:
        status, body = await app.get("/deliveries", params={"state": "delivered"})
        assert status == 200, body
        rows: list[dict[str, Any]] = body["deliveries"]
        return rows

    await wait_until(delivered, what="the delivery marked delivered")
    (row,) = await delivered()
    for name in ("created_at", "updated_at", "delivered_at"):
        assert parse(row[name]) >= before, (name, row)
    assert row["next_attempt_at"] is None
    status, detail = await app.get(f"/deliveries/{row['id']}")
    assert status == 200, detail
    assert detail["created_at"] == row["created_at"]
    (attempt,) = detail["attempt_log"]
    assert parse(attempt["started_at"]) >= before
    assert isinstance(attempt["duration"], float) and attempt["duration"] >= 0


async def test_a_pending_delivery_says_when_it_is_next_tried(
    serve: Start, receiver: MakeReceiver
) -> None:
    app = await serve(
        events_config(
            {"a.*": ["http://127.0.0.1:9/none"]}, retry_delay="1h", max_delay="1h", timeout="1s"
        )
    )
    status, body = await app.post("/events", {"type": "a.b"})
    assert status == 202, body

    async def retrying() -> list[dict[str, Any]]:
        status, body = await app.get("/deliveries", params={"state": "pending"})
        assert status == 200, body
        return [d for d in body["deliveries"] if d["attempts"] >= 1]

    await wait_until(retrying, what="a failed first attempt")
    (row,) = await retrying()
    assert (parse(row["next_attempt_at"]) - parse(row["updated_at"])).total_seconds() > 1800
