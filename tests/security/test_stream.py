"""``/events/stream`` and ``/events/ws`` against a real ``tidings serve``, with hostile input: a
``Last-Event-ID`` or ``after`` that only looks like a number, a huge pattern, thousands of
patterns, and no key. Each is a clear 4xx naming the field, never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.server.conftest import Running, serve  # noqa: F401 - fixture, found by name

Start = Callable[..., Awaitable[Running]]
READER = "stream-reader-key-0123456789"


def keyed() -> dict[str, Any]:
    return {"server": {"api_keys": [{"name": "r", "key": READER, "scopes": ["read"]}]}}


async def raw_get(
    app: Running, target: str, *headers: bytes, close: bool = True
) -> tuple[int, bytes]:
    """Status and the start of the answer to a GET sent byte for byte (headers that an HTTP
    client library would re-encode)."""
    parts = urlsplit(app.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        request = b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        request += b"Authorization: Bearer " + READER.encode() + b"\r\n"
        for header in headers:
            request += header + b"\r\n"
        writer.write(request + (b"Connection: close\r\n" if close else b"") + b"\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.read(4096), 30)
    finally:
        writer.close()
    status = int(head.split(b" ", 2)[1])
    return status, head


@pytest.mark.parametrize("value", [b"\xb2", b"\xb9\xb3", b"1\xb2", b"-1", b"1e3", b" ", b"0x10"])
async def test_last_event_id_that_only_looks_like_a_number_is_a_400(
    serve: Start,  # noqa: F811
    value: bytes,
) -> None:
    app = await serve(keyed())
    status, head = await raw_get(app, "/events/stream", b"Last-Event-ID: " + value)
    assert status == 400, head[:600]
    assert b"Last-Event-ID" in head, head[:600]


async def test_websocket_refuses_a_bad_last_event_id_without_a_server_error(
    serve: Start,  # noqa: F811
) -> None:
    app = await serve(keyed())
    status, head = await raw_get(
        app,
        "/events/ws",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Last-Event-ID: \xb2",
        close=False,
    )
    assert status == 400, head[:600]


@pytest.mark.parametrize("after", ["\u0662", "1_000", " 7", "1" * 40, "-5", "1.5", "\u00b2"])
async def test_after_must_be_a_plain_position(serve: Start, after: str) -> None:  # noqa: F811
    app = await serve(keyed())
    auth = {"Authorization": f"Bearer {READER}"}
    timeout = aiohttp.ClientTimeout(total=30)  # a stream that opened would never end
    async with app.session.get(f"{app.url}/events/stream", params={"after": after},
                               headers=auth, timeout=timeout) as resp:  # fmt: skip
        assert resp.status == 400, (after, resp.status)
        body = await resp.json(content_type=None)
    assert body["field"] == "after", body


async def opened(app: Running, target: str, **params: Any) -> tuple[int, Any]:
    """Status and problem of a GET of the stream; a stream that opens is left at once."""
    auth = {"Authorization": f"Bearer {READER}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with app.session.get(app.url + target, params=params or None, headers=auth,
                               timeout=timeout) as resp:  # fmt: skip
        if resp.status == 200:
            return 200, None
        return resp.status, await resp.json(content_type=None)


async def test_huge_and_countless_patterns_are_refused(serve: Start) -> None:  # noqa: F811
    app = await serve(keyed())
    status, body = await opened(app, "/events/stream", pattern="a." * 600)
    assert status == 400 and body["field"] == "pattern", body
    status, body = await opened(app, "/events/stream", pattern="a..b")
    assert status == 400 and body["field"] == "pattern", body
    many = "&".join(f"pattern=t{i}.*" for i in range(3000))
    status, body = await opened(app, f"/events/stream?{many}")
    assert status == 400 and body["field"] == "pattern", (status, body)
    assert "at most 50" in body["detail"], body
    fifty = "&".join(f"pattern=t{i}.*" for i in range(50))
    status, body = await opened(app, f"/events/stream?{fifty}")
    assert status == 200, body


async def test_no_key_no_stream(serve: Start) -> None:  # noqa: F811
    app = await serve(keyed())
    status, body = await app.get("/events/stream")
    assert status == 401, body
    status, body = await app.get("/events/stream", headers={"Authorization": "Bearer nope"})
    assert status == 401, body
    status, _ = await raw_get(app, "/events/stream", b"Cookie: tidings_key=nope")
    assert status in (200, 401)  # the request carries the right bearer: the cookie is ignored
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await app.session.ws_connect(
            app.url + "/events/ws", headers={"Cookie": f"tidings_key={READER}"}
        )
    assert refused.value.status == 401
