"""Live streams: SSE at /events/stream and the WebSocket at /events/ws, against a real uvicorn.

Resuming after a disconnect misses nothing (ids counted), a slow client is cut off with the
reason while its buffer stays bounded, patterns filter, keys and scopes hold, bad input is a
400 naming the parameter, one poller serves every client, and SIGTERM ends open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
import yaml

from tests.server.conftest import free_port
from tests.server.test_serve_process import start_serve, wait_exit
from tests.server.test_webhooks_more import pg_store  # noqa: F401 (a fixture)
from tidings.config import load
from tidings.server.app import create_app
from tidings.server.service import Service
from tidings.server.stream import Hub

READER = "stream-reader-key-0123456789"
PUBLISHER = "stream-publisher-key-0123456789"
NS = "i13stream"  # event types of these tests


@dataclass
class Live:
    url: str
    service: Service
    hub: Hub
    session: aiohttp.ClientSession

    async def publish(self, count: int, type_: str = f"{NS}.tick", batch: int = 1000) -> None:
        sent = 0
        while sent < count:
            n = min(batch, count - sent)
            body = [{"type": type_, "data": {"n": sent + i}} for i in range(n)]
            async with self.session.post(self.url + "/events", json=body) as resp:
                assert resp.status == 202, await resp.text()
            sent += n


Start = Callable[..., Awaitable[Live]]


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Start]:
    """``await live(config)``: tidings serve in-process under uvicorn (SQLite in tmp_path)."""
    stops: list[Callable[[], Awaitable[None]]] = []

    async def start(config: dict[str, Any] | None = None, **hub: Any) -> Live:
        config = dict(config or {})
        config.setdefault("store", {"url": f"sqlite:///{tmp_path / 'tidings.db'}"})
        config.setdefault("server", {})["port"] = port = free_port()
        path = tmp_path / "tidings.yaml"
        path.write_text(yaml.safe_dump(config))
        service = Service(load(path, env={}), path)
        app = create_app(service)
        the_hub: Hub = app.state.tidings_hub
        for name, value in hub.items():
            setattr(the_hub, name, value)
        uv = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        uv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        task = asyncio.ensure_future(uv.serve())
        deadline = time.monotonic() + 10
        while not uv.started:
            if task.done() or time.monotonic() > deadline:
                raise RuntimeError(f"tidings serve did not start: {task.exception()}")
            await asyncio.sleep(0.01)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

        async def stop() -> None:
            the_hub.close()  # as close_streams_on_exit does on SIGTERM (tested below)
            uv.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 20)
            await session.close()

        stops.append(stop)
        return Live(f"http://127.0.0.1:{port}", service, the_hub, session)

    yield start
    for stop in reversed(stops):
        await stop()


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Parsed SSE messages: ``{"id", "event", "data"}`` (comments and ``retry:`` skipped)."""
    msg: dict[str, Any] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in msg:
                yield msg
            msg = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            msg[name] = value[1:] if value.startswith(" ") else value


async def read_sse(
    live: Live, count: int, *, query: str = "", headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The first ``count`` messages of a stream (then the connection is dropped)."""
    got: list[dict[str, Any]] = []
    async with live.session.get(live.url + "/events/stream" + query, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        async for msg in sse_events(resp):
            got.append(msg)
            if len(got) >= count:
                break
    return got


async def wait_until(what: Callable[[], bool], timeout: float = 30.0, why: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {why}")
        await asyncio.sleep(0.02)


async def test_sse_resumes_from_last_event_id_without_missing_any(live: Start) -> None:
    app = await live()
    total, first_part = 10_000, 3_000
    seen: list[int] = []
    async with app.session.get(app.url + "/events/stream?pattern=i13stream.**") as resp:
        assert resp.status == 200
        publisher = asyncio.ensure_future(app.publish(total))
        async for msg in sse_events(resp):
            seen.append(int(msg["id"]))
            if len(seen) >= first_part:
                break  # the client goes away in the middle of the flood
    last = seen[-1]
    headers = {"Last-Event-ID": str(last)}
    async with app.session.get(
        app.url + "/events/stream?pattern=i13stream.**", headers=headers
    ) as resp:
        assert resp.status == 200
        async for msg in sse_events(resp):
            assert "event" not in msg, msg
            seen.append(int(msg["id"]))
            if len(seen) >= total:
                break
    await publisher
    stored = list(range(1, app.service.store.head() + 1))
    assert len(seen) == total, f"got {len(seen)} events, expected {total}"
    assert len(set(seen)) == total, f"{total - len(set(seen))} duplicates"
    assert seen == sorted(seen) == stored, (seen[:5], seen[-5:], len(stored))


async def test_websocket_resumes_from_after_without_missing_any(live: Start) -> None:
    app = await live()
    total, first_part = 10_000, 4_000
    seen: list[int] = []
    url = app.url.replace("http", "ws") + "/events/ws?pattern=i13stream.*"
    async with app.session.ws_connect(url) as ws:
        publisher = asyncio.ensure_future(app.publish(total))
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            seen.append(json.loads(msg.data)["position"])
            if len(seen) >= first_part:
                break
    async with app.session.ws_connect(url + f"&after={seen[-1]}") as ws:
        async for msg in ws:
            body = json.loads(msg.data)
            assert body["event"]["type"] == "i13stream.tick", body
            seen.append(body["position"])
            if len(seen) >= total:
                break
    await publisher
    assert len(set(seen)) == len(seen) == total, (len(seen), len(set(seen)))
    assert seen == list(range(1, total + 1)), (seen[:3], seen[-3:])


async def slow_client(app: Live, request: bytes) -> tuple[bytes, int]:
    """A client that sends ``request`` and reads nothing until the server cut it off: what it
    then receives, and how many events were published meanwhile. Asserts the buffer held."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(app.url.rsplit(":", 1)[1])))
    sock.sendall(request)
    await wait_until(lambda: len(app.hub.watches) == 1, why="the client did not join")
    watch = next(iter(app.hub.watches))
    biggest = 0
    published = 0
    while watch.reason is None and published < 200_000:  # the client reads nothing
        await app.publish(100, f"{NS}.slow")  # pages smaller than the buffer: only slowness
        published += 100
        biggest = max(biggest, watch.queued)
    assert watch.reason is not None, f"not cut off after {published} events"
    assert "200 events" in watch.reason, watch.reason
    assert biggest <= 200 and watch.queued == 0, (biggest, watch.queued)
    await app.publish(2000, f"{NS}.slow")  # nothing more is buffered for it
    assert watch.queued == 0
    sock.setblocking(False)
    received = b""
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 30)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    sock.close()
    await wait_until(lambda: not app.hub.watches, why="the cut-off client stayed registered")
    print(f"slow client: {watch.sent} events handed to its connection, {published} published")
    return received, published


async def test_a_slow_sse_client_is_cut_off_with_the_reason_and_memory_stays_bounded(
    live: Start,
) -> None:
    app = await live(buffer=200)
    request = b"GET /events/stream?pattern=** HTTP/1.1\r\nHost: x\r\n\r\n"
    received, published = await slow_client(app, request)
    tail = received[-600:].decode(errors="replace")
    assert b"event: error" in received, tail
    assert "too slow: 200 events" in tail and "Last-Event-ID" in tail, tail
    ids = received.count(b"\nid: ")
    assert 0 < ids < published, (ids, published, len(received), received.count(b"id: "))


async def test_a_slow_websocket_client_is_closed_with_1013_and_the_reason(live: Start) -> None:
    app = await live(buffer=200)
    request = (
        b"GET /events/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    received, published = await slow_client(app, request)
    assert received.startswith(b"HTTP/1.1 101"), received[:200]
    assert b"\x03\xf5too slow: 200 events" in received, received[-300:]  # close code 1013
    assert received.count(b'"position":') < published


async def test_patterns_filter_and_repeat(live: Start) -> None:
    app = await live()
    reader = asyncio.ensure_future(
        read_sse(app, 20, query="?pattern=i13stream.order.*&pattern=i13stream.pay.done&after=0")
    )
    await app.publish(10, f"{NS}.order.created", batch=5)
    await app.publish(10, f"{NS}.other")
    await app.publish(5, f"{NS}.pay.done")
    await app.publish(5, f"{NS}.order.shipped")
    got = await asyncio.wait_for(reader, 30)
    types = [json.loads(m["data"])["event"]["type"] for m in got]
    assert (
        types == [f"{NS}.order.created"] * 10 + [f"{NS}.pay.done"] * 5 + [f"{NS}.order.shipped"] * 5
    ), types


async def test_keys_and_scopes_guard_both_streams(live: Start) -> None:
    app = await live(
        {
            "server": {
                "api_keys": [
                    {"name": "r", "key": READER, "scopes": ["read"]},
                    {"name": "p", "key": PUBLISHER, "scopes": ["publish"]},
                ]
            }
        }
    )
    async with app.session.get(app.url + "/events/stream") as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 401 and resp.content_type == "application/problem+json", body
        assert body["type"] == "urn:tidings:problem:unauthorized", body
    bad = {"Authorization": f"Bearer {PUBLISHER}"}
    async with app.session.get(app.url + "/events/stream", headers=bad) as resp:
        assert resp.status == 403, await resp.text()
    ok = {"Authorization": f"Bearer {READER}"}
    async with app.session.get(app.url + "/events/stream?after=0", headers=ok) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
    ws_url = app.url.replace("http", "ws") + "/events/ws"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with app.session.ws_connect(ws_url):
            pass
    assert refused.value.status == 401, refused.value
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with app.session.ws_connect(ws_url, headers=bad):
            pass
    assert refused.value.status == 403, refused.value
    async with app.session.ws_connect(ws_url + "?after=0", headers={"X-API-Key": READER}) as ws:
        async with app.session.post(
            app.url + "/events", json={"type": f"{NS}.keyed"}, headers={"X-API-Key": PUBLISHER}
        ) as resp:
            assert resp.status == 202, await resp.text()
        msg = await ws.receive(timeout=30)
        assert json.loads(msg.data)["event"]["type"] == f"{NS}.keyed", msg


@pytest.mark.parametrize(
    ("query", "headers", "field"),
    [
        ("?patern=a.*", {}, "patern"),
        ("?after=-1", {}, "after"),
        ("?after=abc", {}, "after"),
        ("?pattern=a..b", {}, "pattern"),
        ("", {"Last-Event-ID": "seven"}, "Last-Event-ID"),
        ("", {"Last-Event-ID": "-3"}, "Last-Event-ID"),
    ],
)
async def test_bad_input_is_a_400_naming_it(
    live: Start, query: str, headers: dict[str, str], field: str
) -> None:
    app = await live()
    async with app.session.get(app.url + "/events/stream" + query, headers=headers) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 400 and body["field"] == field, body
        assert field in body["detail"], body
    ws_url = app.url.replace("http", "ws") + "/events/ws" + query
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with app.session.ws_connect(ws_url, headers=headers):
            pass
    assert refused.value.status == 400, refused.value
    async with app.session.get(app.url + "/events/ws") as resp:
        assert resp.status == 426, await resp.text()


async def test_one_poller_feeds_every_client(live: Start) -> None:
    app = await live()
    readers = [asyncio.ensure_future(read_sse(app, 50, query="?pattern=**")) for _ in range(8)]
    await wait_until(lambda: len(app.hub.watches) == 8, why=f"{len(app.hub.watches)} joined")
    reads = app.hub.reads
    await asyncio.sleep(1.0)
    polls = app.hub.reads - reads
    assert polls <= 1.0 / app.hub.poll + 5, f"{polls} reads of the log in 1s for 8 clients"
    await app.publish(50, f"{NS}.fan")
    got = await asyncio.wait_for(asyncio.gather(*readers), 30)
    assert all(len(g) == 50 for g in got), [len(g) for g in got]
    assert len({tuple(m["id"] for m in g) for g in got}) == 1  # the same ids, in order


async def test_the_streams_are_described(live: Start) -> None:
    app = await live()
    async with app.session.get(app.url + "/openapi.json") as resp:
        doc = await resp.json()
    sse = doc["paths"]["/events/stream"]["get"]
    assert "text/event-stream" in sse["responses"]["200"]["content"], sse["responses"]
    names = {p["name"] for p in sse["parameters"]}
    assert names == {"pattern", "after", "Last-Event-ID"}, names
    assert "WebSocket" in doc["paths"]["/events/ws"]["get"]["description"]


async def test_sigterm_ends_open_streams_and_serve_exits(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "tidings.yaml"
    config.write_text(
        yaml.safe_dump(
            {"store": {"url": f"sqlite:///{tmp_path / 't.db'}"}, "server": {"port": port}}
        )
    )
    procs: list[Any] = []
    log = tmp_path / "serve.log"
    proc = start_serve(procs, config, log)
    try:
        from tests.server.conftest import wait_healthy  # noqa: PLC0415

        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, proc, log)
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/events/stream") as resp:
                assert resp.status == 200
                await resp.content.readline()
                proc.send_signal(signal.SIGTERM)
                rest = await asyncio.wait_for(resp.content.read(), 15)
            assert b"event: error" in rest and b"shutting down" in rest, rest
        code = await wait_exit(proc, 15)
        assert code == 0, log.read_text()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


async def test_sse_resume_on_postgresql_with_concurrent_writers(
    live: Start,
    pg_store: str,  # noqa: F811 (the fixture imported above)
) -> None:
    """PostgreSQL commits concurrent appends out of position order; the stream reads up to the
    store's safe horizon only, so a resumed client still sees every position once."""
    app = await live({"store": {"url": pg_store}})
    per_writer, writers, first_part = 2_000, 3, 2_500
    total = per_writer * writers
    seen: list[int] = []
    url = app.url + "/events/stream?pattern=i13stream.**"
    async with app.session.get(url) as resp:
        assert resp.status == 200
        publishers = asyncio.gather(
            *(app.publish(per_writer, f"{NS}.pg{w}", batch=50) for w in range(writers))
        )
        async for msg in sse_events(resp):
            seen.append(int(msg["id"]))
            if len(seen) >= first_part:
                break
    async with app.session.get(url, headers={"Last-Event-ID": str(seen[-1])}) as resp:
        async for msg in sse_events(resp):
            seen.append(int(msg["id"]))
            if len(seen) >= total:
                break
    await publishers
    stored = [r.position for r in app.service.store.read_all(0, total + 10)]
    assert len(seen) == len(set(seen)) == total, (len(seen), len(set(seen)))
    assert seen == stored, (seen[:5], stored[:5], len(stored))


async def test_an_idle_stream_sends_keep_alive_comments(live: Start) -> None:
    app = await live(heartbeat=0.2)
    comments: list[str] = []
    async with app.session.get(app.url + "/events/stream") as resp:
        assert resp.headers["Cache-Control"] == "no-store", resp.headers
        started = time.monotonic()
        async for raw in resp.content:
            if raw.startswith(b": keep-alive"):
                comments.append(raw.decode())
            if len(comments) >= 3 or time.monotonic() - started > 30:
                break
    assert len(comments) >= 3, comments
