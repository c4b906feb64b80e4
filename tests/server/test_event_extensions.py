"""``POST /events`` keeps CloudEvents extension attributes through the store to the webhook,
in both CloudEvents payload formats, and refuses a ``specversion`` other than 1.0 with a 400."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from tests.server.conftest import Receiver, Running

Start = Callable[..., Awaitable[Running]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EXTENSIONS = {"traceparent": TRACEPARENT, "partitionkey": "customer-7", "myext": "v", "seq": 3}


def _config(structured: str, binary: str) -> dict[str, object]:
    fast = {"retry_delay": "0.05s", "max_delay": "0.2s", "jitter": 0, "timeout": "2s"}
    return {
        "events": {
            "enabled": True,
            **fast,
            "webhooks": {
                "structured": {"url": structured, "events": ["**"], "format": "cloudevents"},
                "binary": {"url": binary, "events": ["**"], "format": "cloudevents-binary"},
            },
        }
    }


async def test_extensions_reach_the_webhook_in_both_cloudevents_modes(
    serve: Start, receiver: MakeReceiver
) -> None:
    structured, binary = await receiver(), await receiver()
    app = await serve(_config(structured.url, binary.url))
    event = {"specversion": "1.0", "type": "shop.order.placed", "source": "/shop", "data": {"n": 1}}
    status, body = await app.post("/events", {**event, **EXTENSIONS})
    assert status == 202, body
    await structured.wait_for(1)
    await binary.wait_for(1)
    sent = msgspec.json.decode(structured.requests[0].body)
    assert {k: sent.get(k) for k in EXTENSIONS} == EXTENSIONS
    headers = binary.requests[0].headers
    assert {k: headers.get(f"ce-{k}") for k in EXTENSIONS} == {
        k: str(v) for k, v in EXTENSIONS.items()
    }
    status, listed = await app.get("/events", params={"type": "shop.order.placed"})
    assert status == 200, listed
    [stored] = [row["event"] for row in listed["events"]]
    assert {k: stored.get(k) for k in EXTENSIONS} == EXTENSIONS


async def test_bad_specversion_and_extensions_are_400_naming_the_attribute(serve: Start) -> None:
    app = await serve()
    status, body = await app.post("/events", {"type": "a.b", "specversion": "0.3"})
    assert status == 400, body
    assert body["field"] == "specversion" and "1.0" in body["detail"]
    status, body = await app.post("/events", [{"type": "a.b", "myext": {"nested": True}}])
    assert status == 400, body
    assert body["field"] == "[0].myext" and "object" in body["detail"]
    status, body = await app.post("/events", {"type": "a.b", "Bad_Name": "x"})
    assert status == 400, body
    assert body["field"] == "Bad_Name" and "lowercase" in body["detail"]
