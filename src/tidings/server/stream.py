"""Live streams of stored events: ``GET /events/stream`` (Server-Sent Events) and ``/events/ws``.

One ``Hub`` per process reads the store's log (one poller, however many clients) and hands each
new page to every live client whose patterns match. A client first catches up from the store on
its own (from ``Last-Event-ID`` / ``?after=``, a store position), then joins the hub's live
feed at the position the hub has reached, so a reconnect misses nothing and sees nothing twice.
Each client buffers at most ``buffer`` events; a client that falls that far behind is cut off
with a reason (SSE: a last ``event: error``; WebSocket: close code 1013) rather than growing
the server's memory, and can resume from the last id it saw. ``close()`` ends every stream
(server shutdown: ``close_streams_on_exit``), so uvicorn does not wait on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgspec
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tidings.server.auth import require
from tidings.server.browse import stored_event
from tidings.server.operations import Handler, Operation
from tidings.server.params import Param, Query
from tidings.server.problems import ApiError
from tidings.store.base import EventStore, Recorded
from tidings.topics import Pattern, PatternError, compile_pattern

__all__ = [
    "STREAM_QUERY",
    "Hub",
    "StreamCollector",
    "Watch",
    "close_streams_on_exit",
    "stream_operations",
]

log = logging.getLogger("tidings.server")

BUFFER = 2_000  # events one client may have waiting before it is cut off
HEARTBEAT = 15.0  # seconds between SSE keep-alive comments when nothing happens
POLL = 0.05  # seconds between reads of the log when nothing woke the hub
GAP = 0.025  # seconds between reads at the least, when writes wake the hub
PAGE = 1_000  # events per read of the log
MAX_PATTERNS = 50  # patterns one client may follow

STREAM_QUERY = (
    Param(
        "pattern",
        {"type": "string", "maxLength": 1024},
        "Event type or glob pattern (`order.*`, `**`); repeat for several (default `**`).",
        multi=True,
    ),
    Param(
        "after",
        {"type": "integer", "minimum": 0},
        "Start after this store position (the `id:` of an event seen); default: new events "
        "only. The `Last-Event-ID` header, when sent, wins.",
    ),
)

_json = msgspec.json.Encoder()


class Item:
    """A stored event on its way to clients: its JSON is encoded once, however many get it."""

    __slots__ = ("_data", "position", "rec")

    def __init__(self, rec: Recorded) -> None:
        self.rec = rec
        self.position = rec.position
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = _json.encode(stored_event(self.rec))
        return self._data


class Batch:
    """Events for a client, in position order; the whole page of the hub is one ``Batch``
    shared by every client that wants all of it, so its SSE text is made once, not per client."""

    __slots__ = ("_sse", "_subsets", "items")

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self._sse: bytes | None = None
        self._subsets: dict[tuple[str, ...], Batch] = {}

    def subset(self, watch: Watch) -> Batch:
        """The items ``watch`` wants: matched once per set of patterns, not once per client."""
        if watch.everything:
            return self
        found = self._subsets.get(watch.key)
        if found is None:
            wanted = [i for i in self.items if watch.wants(i.rec)]
            found = self if len(wanted) == len(self.items) else Batch(wanted)
            self._subsets[watch.key] = found
        return found

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = b"".join(
                b"id: %d\ndata: %s\n\n" % (item.position, item.data) for item in self.items
            )
        return self._sse


class StreamCollector:
    """``tidings_stream_clients``: how many SSE and WebSocket clients follow the live feed now
    (clients still catching up from the store are not counted yet)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "tidings_stream_clients",
            "Live SSE and WebSocket clients of /events/stream and /events/ws",
            value=len(self.hub.watches),
        )


class Watch:
    """One client's view of the log: catch up from the store, then live from the hub."""

    def __init__(self, hub: Hub, patterns: list[Pattern], after: int) -> None:
        self.hub = hub
        self.patterns = patterns
        self.key = tuple(sorted(p.text for p in patterns))
        self.everything = "**" in self.key
        self.scanned = after  # the log was read up to here
        self.live = False
        self.sent = 0  # events handed to the client's connection
        self.queued = 0  # events waiting in the buffer
        self.reason: str | None = None  # why the stream ended, when it did not end well
        self._queue: deque[Batch] = deque()
        self._waiter: asyncio.Future[None] | None = None  # set: the client has something

    def wants(self, rec: Recorded) -> bool:
        return any(p.matches(rec.event.type) for p in self.patterns)

    def offer(self, page: Batch) -> None:
        """Take the hub's new page (positions above ``scanned``); cut off when it is full."""
        if self.reason is not None or not page.items:
            return
        if page.items[0].position <= self.scanned:  # went live inside this page: the rest
            page = Batch([i for i in page.items if i.position > self.scanned])
            if not page.items:
                return
        self.scanned = page.items[-1].position
        batch = page.subset(self)
        if not batch.items:
            return
        if self.queued + len(batch.items) > self.hub.buffer:
            self.end(
                f"too slow: {self.hub.buffer} events waited unsent (the per-client buffer); "
                "reconnect with Last-Event-ID set to the last id received to resume without "
                "a gap"
            )
            return
        self._queue.append(batch)
        self.queued += len(batch.items)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def end(self, reason: str) -> None:
        self.reason = reason
        self._queue.clear()  # the memory goes now, not when the client gets round to it
        self.queued = 0
        self._wake()

    async def batches(self, heartbeat: float) -> AsyncIterator[list[Batch]]:
        """Matching events in position order, some batches at a time; an empty list means
        ``heartbeat`` seconds passed without any. Ends when cut off (``reason`` says why)."""
        self.hub.join(self)
        try:
            async for batch in self._catch_up():
                yield [batch]
            while self.reason is None:
                if self._queue:
                    batches = list(self._queue)
                    self._queue.clear()
                    self.sent += self.queued
                    self.queued = 0
                    yield batches
                    continue
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(heartbeat):
                        await self._waiter
                except TimeoutError:
                    yield []
                self._waiter = None
        finally:
            self.hub.leave(self)

    async def _catch_up(self) -> AsyncIterator[Batch]:
        """Read the store until the hub's live edge, then go live (no await in between)."""
        store = self.hub.store
        while self.reason is None:
            edge = self.hub.position
            if edge is None:  # the hub is starting (a bounded wait: it may fail instead)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.hub.started(), self.hub.poll)
                continue
            if self.scanned >= edge:
                self.live = True
                return
            page = await store.aread_all(self.scanned, self.hub.page)
            if page:
                self.scanned = page[-1].position
                batch = [Item(r) for r in page if self.wants(r)]
                if batch:
                    self.sent += len(batch)
                    yield Batch(batch)
            else:  # behind the edge, yet nothing to read: a write is still committing
                await asyncio.sleep(self.hub.poll)


class Hub:
    """The one reader of the log per process, feeding every live ``Watch``."""

    def __init__(
        self,
        store: EventStore,
        *,
        buffer: int = BUFFER,
        poll: float = POLL,
        page: int = PAGE,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self.store = store
        self.buffer = buffer
        self.poll = poll
        self.page = page
        self.heartbeat = heartbeat
        self.position: int | None = None  # the last position handed to live clients
        self.watches: set[Watch] = set()
        self.closed = False
        self.reads = 0  # reads of the log (tests: one poller, not one per client)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._edge = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def join(self, watch: Watch) -> None:
        if self.closed:
            watch.end("the server is shutting down; reconnect with Last-Event-ID to resume")
            return
        self._loop = asyncio.get_running_loop()
        self.watches.add(watch)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        self._wake.set()

    def leave(self, watch: Watch) -> None:
        self.watches.discard(watch)

    def wake(self) -> None:
        """Read the log now (e.g. after an accept), not at the next poll."""
        self._wake.set()

    def waking(self, handler: Handler) -> Handler:
        """``handler`` (one that stores events), then ``wake``: the streams see its events
        without waiting for the next poll."""

        async def wrapper(request: Request) -> Response:
            response = await handler(request)
            if response.status_code < 300 and self.watches:
                self._wake.set()
            return response

        return wrapper

    async def started(self) -> None:
        """Wait until the hub knows the live edge."""
        await self._edge.wait()

    async def _run(self) -> None:
        try:
            while self.watches and not self.closed:
                if self.position is None:
                    self.position = await asyncio.to_thread(self.store.head)
                    self._edge.set()
                self.reads += 1
                # a page is at most a quarter of a client's buffer, and clients run between
                # pages: a burst does not cut off a client that keeps up
                size = max(1, min(self.page, self.buffer // 4))
                self._wake.clear()  # before the read: a write during it wakes the next wait
                read_at = time.monotonic()
                records = await self.store.aread_all(self.position, size)
                if records:
                    page = Batch([Item(r) for r in records])
                    for watch in [w for w in self.watches if w.live]:
                        watch.offer(page)
                    self.position = records[-1].position
                    await asyncio.sleep(0)
                if len(records) < size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll)
                    # woken by a write: read after GAP at the soonest, so a flood of small
                    # writes makes pages of several, not one read and one send per write
                    rest = GAP - (time.monotonic() - read_at)
                    if rest > 0:
                        await asyncio.sleep(rest)
        except Exception as exc:  # the store failed: end the streams with the reason
            log.error("live stream: reading the store failed: %s", exc)
            for watch in list(self.watches):
                watch.end(f"the store is not available: {exc}; reconnect to resume")
        finally:
            # nobody watches: forget the edge, so the next client starts at the new one
            self.position = None
            self._edge.clear()

    def close(self) -> None:
        """End every stream (the server is stopping); later clients are refused likewise."""
        self.closed = True
        for watch in list(self.watches):
            watch.end("the server is shutting down; reconnect with Last-Event-ID to resume")
        self._wake.set()

    def close_threadsafe(self) -> None:
        """``close`` from a signal handler or another thread."""
        if self._loop is None:  # nobody ever joined: refusing later clients is all there is
            self.closed = True
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close)


async def _after(conn: HTTPConnection, q: Query, store: EventStore) -> int:
    """Where a client resumes: ``Last-Event-ID`` (an id it saw), else ``?after=``, else the
    newest stored event (taken before the answer starts: what is published once a client
    has its answer's headers reaches it)."""
    last = conn.headers.get("last-event-id")
    if last is not None:
        value = last.strip()
        if not (value.isascii() and value.isdigit()) or len(value) > 19:  # not '²'
            raise ApiError(
                400,
                f"Last-Event-ID: expected a store position (a whole number >= 0, the id: of "
                f"an event this stream sent), got {last[:40]!r}",
                "Last-Event-ID",
            )
        return int(value)
    if q.text("after") is None:
        return await asyncio.to_thread(store.head)
    return q.integer("after", 0, 0, 2**62)


def _patterns(q: Query) -> list[Pattern]:
    given = q.all("pattern") or ["**"]
    if len(given) > MAX_PATTERNS:  # each is matched against every event, for every client
        raise ApiError(
            400,
            f"pattern: given {len(given)} times, at most {MAX_PATTERNS}; use a wider glob "
            "(order.* or order.**) instead of many names",
            "pattern",
        )
    try:
        return [compile_pattern(p) for p in given]
    except PatternError as exc:
        raise ApiError(400, f"pattern: {exc}", "pattern") from None


def _sse(batches: list[Batch]) -> bytes:
    return b"".join(batch.sse for batch in batches)


def _sse_error(reason: str) -> bytes:
    return b"event: error\ndata: %s\n\n" % _json.encode({"detail": reason})


class Streams:
    """The handlers of ``/events/stream`` and ``/events/ws`` around one ``Hub``."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def sse(self, request: Request) -> Response:
        q: Query = request.state.query
        watch = Watch(self.hub, _patterns(q), await _after(request, q, self.hub.store))
        heartbeat = self.hub.heartbeat

        async def body() -> AsyncIterator[bytes]:
            yield b": tidings live stream\nretry: 1000\n\n"
            async for batch in watch.batches(heartbeat):
                yield _sse(batch) if batch else b": keep-alive\n\n"
            if watch.reason is not None:
                yield _sse_error(watch.reason)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def ws_upgrade_needed(self, request: Request) -> Response:
        raise ApiError(
            426,
            "/events/ws is a WebSocket: connect with ws://.../events/ws (Upgrade: websocket); "
            "for plain HTTP use GET /events/stream (Server-Sent Events)",
            kind="upgrade-required",
        )

    async def ws(self, websocket: WebSocket) -> None:
        try:
            await require(websocket, "read")
            q = Query(websocket, STREAM_QUERY)
            watch = Watch(self.hub, _patterns(q), await _after(websocket, q, self.hub.store))
        except ApiError as exc:
            try:  # an HTTP answer (a problem), where the server can send one
                await websocket.send_denial_response(exc.response())
            except RuntimeError:
                await websocket.close(1008, exc.message[:120])
            return
        await websocket.accept()

        async def send() -> None:
            async for batch in watch.batches(self.hub.heartbeat):
                for item in (item for one in batch for item in one.items):
                    await websocket.send_text(item.data.decode())
            if watch.reason is not None:
                code = 1001 if self.hub.closed else 1013
                await websocket.close(code, watch.reason[:120])

        sender = asyncio.ensure_future(send())
        receiver = asyncio.ensure_future(_until_disconnect(websocket))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, receiver):
                task.cancel()
            for task in (sender, receiver):
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                    await task
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            log.debug("websocket stream ended: %s", sender.exception())


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends until it goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume after this store position (browsers send it on reconnect).",
    "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
}
_SSE_TEXT = (
    "Server-Sent Events: one `data:` line per event (the stored event as GET /events gives "
    "it), with `id:` its store position. Catches up from the store after `Last-Event-ID` or "
    "`after`, then follows live. A client more than the per-client buffer behind is cut off "
    "with a last `event: error` naming the limit; `: keep-alive` comments flow when idle."
)
_WS_TEXT = (
    "WebSocket (send `Upgrade: websocket`): one JSON text message per event (the stored event "
    "as GET /events gives it, `position` being its store position); same `pattern` and "
    "`after` as GET /events/stream. A slow client is closed with code 1013 and the reason; a "
    "plain GET answers 426."
)


def stream_operations(hub: Hub) -> tuple[list[Operation], list[WebSocketRoute]]:
    """The stream routes: the operations of the route table, and the WebSocket route."""
    streams = Streams(hub)
    params = [p.openapi() for p in STREAM_QUERY]
    ops = [
        Operation(
            "GET", "/events/stream", streams.sse, "read", "Follow events live (SSE)", "events",
            query=STREAM_QUERY, answer_type="text/event-stream", description=_SSE_TEXT,
            extra={"parameters": [*params, _LAST_EVENT_ID]},
        ),
        Operation(
            "GET", "/events/ws", streams.ws_upgrade_needed, "read",
            "Follow events live (WebSocket)", "events", query=STREAM_QUERY, errors=(426,),
            description=_WS_TEXT, extra={"parameters": [*params, _LAST_EVENT_ID]},
        ),
    ]  # fmt: skip
    return ops, [WebSocketRoute("/events/ws", streams.ws)]


def close_streams_on_exit(server: Any, app: Any) -> None:
    """Make a uvicorn ``server`` end the live streams of ``app`` when told to exit: uvicorn
    waits for open responses before it stops, and a stream never ends by itself."""
    hub: Hub | None = getattr(app.state, "tidings_hub", None)
    if hub is None:
        return
    handle_exit: Callable[[int, Any], None] = server.handle_exit

    def closing(sig: int, frame: Any) -> None:
        hub.close_threadsafe()
        handle_exit(sig, frame)

    server.handle_exit = closing
