"""Lists of the HTTP API: cursor pages that miss nothing and repeat nothing, cursors that cannot
be forged or reused with other filters, unknown query parameters refused on every route, and
events queried by the store's criteria (pattern, stream, time, correlation id)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.server.conftest import Running
from tests.server.test_webhooks import events_config
from tidings.event import Event

Start = Callable[..., Awaitable[Running]]


async def all_pages(app: Running, path: str, key: str, limit: int) -> list[list[Any]]:
    pages: list[list[Any]] = []
    sep = "&" if "?" in path else "?"
    url = f"{path}{sep}limit={limit}"
    while True:
        status, body = await app.get(url)
        assert status == 200, body
        pages.append(body[key])
        if body["next_cursor"] is None:
            return pages
        assert len(pages) < 50, f"paging does not end: {pages}"
        url = f"{path}{sep}limit={limit}&cursor={body['next_cursor']}"


async def publish(app: Running, events: list[dict[str, Any]]) -> list[str]:
    status, body = await app.post("/events", events)
    assert status == 202, body
    ids: list[str] = body["ids"]
    return ids


async def test_events_page_by_cursor_without_gaps_or_repeats(serve: Start) -> None:
    app = await serve()
    ids = await publish(app, [{"type": "pg.item", "data": {"n": i}} for i in range(7)])
    pages = await all_pages(app, "/events?type=pg.*", "events", 3)
    assert [len(p) for p in pages] == [3, 3, 1], pages
    assert [e["event"]["id"] for p in pages for e in p] == ids
    status, body = await app.get("/events?type=pg.*&limit=7")
    assert status == 200 and body["next_cursor"] is None, "an exact last page says so"


async def test_a_cursor_cannot_be_altered_or_moved_to_other_filters(serve: Start) -> None:
    app = await serve()
    await publish(app, [{"type": "cur.a"}, {"type": "cur.b"}, {"type": "cur.c"}])
    status, body = await app.get("/events?type=cur.*&limit=1")
    assert status == 200, body
    cursor = body["next_cursor"]
    assert isinstance(cursor, str) and cursor, body
    payload, _, mac = cursor.partition(".")
    flipped = ("A" if payload[0] != "A" else "B") + payload[1:]
    for bad, why in [
        (f"{flipped}.{mac}", "payload altered"),
        (f"{payload}.{mac[:-2]}", "mac cut short"),
        ("not-a-cursor", "garbage"),
        ("%00%ff", "control characters"),
        (cursor, "the same cursor with another filter"),
    ]:
        path = "/events?type=cur.b" if why.startswith("the same") else "/events?type=cur.*"
        status, problem = await app.get(f"{path}&limit=1&cursor={bad}")
        assert status == 400, (why, problem)
        assert problem["field"] == "cursor" and "cursor" in problem["detail"], (why, problem)
    status, body = await app.get(f"/events?type=cur.*&limit=1&cursor={cursor}")
    assert status == 200 and body["events"][0]["event"]["type"] == "cur.b", body


async def test_every_route_refuses_an_unknown_query_parameter(serve: Start) -> None:
    app = await serve()
    status, doc = await app.get("/openapi.json")
    assert status == 200, doc
    checked = []
    for path, methods in doc["paths"].items():
        concrete = path.replace("{id}", "nope").replace("{stream}", "nope")
        for method in methods:
            status, body = await app.request(method.upper(), f"{concrete}?bogus_param=1")
            assert status == 400, (method, path, status, body)
            assert body["field"] == "bogus_param" and "bogus_param" in body["detail"], body
            checked.append(f"{method} {path}")
    assert len(checked) >= 25, checked


async def test_repeated_and_malformed_parameters_name_the_parameter(serve: Start) -> None:
    app = await serve()
    for query, field in [
        ("limit=1&limit=2", "limit"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("since=yesterday", "since"),
        ("type=a..b", "type"),
        ("after=-1", "after"),
    ]:
        status, body = await app.get(f"/events?{query}")
        assert status == 400 and body["field"] == field, (query, body)
    status, body = await app.get("/deliveries?state=lost")
    assert status == 400 and body["field"] == "state" and "dead" in body["detail"], body


async def test_events_by_stream_correlation_and_time(serve: Start) -> None:
    app = await serve()
    store = app.service.store
    store.append([Event(type="acct.opened"), Event(type="acct.credited")], stream="acct-1")
    store.append(Event(type="acct.opened"), stream="acct-2")
    await publish(
        app,
        [
            {"type": "pay.made", "correlationid": "c-1"},
            {"type": "pay.made", "correlationid": "c-2"},
        ],
    )
    status, body = await app.get("/events?stream=acct-1")
    assert status == 200 and [e["event"]["type"] for e in body["events"]] == [
        "acct.opened",
        "acct.credited",
    ], body
    assert [e["version"] for e in body["events"]] == [1, 2], body
    status, body = await app.get("/events?correlation_id=c-2")
    assert status == 200 and len(body["events"]) == 1, body
    assert body["events"][0]["event"]["correlationid"] == "c-2", body
    status, body = await app.get("/events?type=acct.*&type=pay.made&until=2000-01-01T00:00:00Z")
    assert status == 200 and body["events"] == [], body
    status, body = await app.get("/events?type=acct.*&since=2000-01-01T00:00:00Z")
    assert status == 200 and len(body["events"]) == 3, body


async def test_a_stream_with_its_version_paged(serve: Start) -> None:
    app = await serve()
    app.service.store.append(
        [Event(type="cart.added", data={"n": i}) for i in range(5)], stream="c1"
    )
    pages = await all_pages(app, "/streams/c1", "events", 2)
    assert [[e["version"] for e in p] for p in pages] == [[1, 2], [3, 4], [5]], pages
    status, body = await app.get("/streams/c1?limit=1")
    assert status == 200 and body["version"] == 5 and body["stream"] == "c1", body
    app.service.store.append(Event(type="cart.added"), stream="c0")
    pages = await all_pages(app, "/streams", "streams", 1)
    assert [s for p in pages for s in p] == [
        {"stream": "c0", "version": 1},
        {"stream": "c1", "version": 5},
    ], pages
    status, body = await app.get("/streams/none-such")
    assert status == 404 and "none-such" in body["detail"], body


async def test_endpoints_and_deliveries_page(serve: Start) -> None:
    app = await serve(events_config(allow_networks=["127.0.0.0/8"]))
    for i in range(3):
        status, ep = await app.post(
            "/endpoints", {"url": f"http://127.0.0.1:9/hook{i}", "events": ["pd.*"]}
        )
        assert status == 201, ep
    pages = await all_pages(app, "/endpoints", "endpoints", 2)
    ids = [e["id"] for p in pages for e in p]
    assert [len(p) for p in pages] == [2, 1] and len(set(ids)) == 3, pages
    await publish(app, [{"type": "pd.x"}, {"type": "pd.y"}])
    pages = await all_pages(app, "/deliveries", "deliveries", 4)
    got = [d["id"] for p in pages for d in p]
    assert len(got) == 6 and len(set(got)) == 6, pages
    assert got == sorted(got, reverse=True), "newest first"


@pytest.mark.parametrize("path", ["/subscriptions", "/dlq", "/replays", "/api-keys"])
async def test_other_lists_answer_a_page(serve: Start, path: str) -> None:
    app = await serve()
    status, body = await app.get(f"{path}?limit=5")
    assert status == 200 and body["next_cursor"] is None, body
