"""FastAPI (and plain Starlette) integration: the publisher as a dependency, a lifespan that
starts and drains publisher, relays and bus, and request metadata on every event.

::

    from fastapi import Depends, FastAPI
    from tidings.integrations.fastapi import RequestContextMiddleware, get_publisher, lifespan

    app = FastAPI(lifespan=lifespan(relays=[Relay(DB_URL, open_publisher())]))
    app.add_middleware(RequestContextMiddleware)

    @app.post("/links")
    async def create(publisher: Publisher = Depends(get_publisher)) -> dict: ...

``lifespan`` opens the publisher the environment names (``TIDINGS_PUBLISHER`` or seed 004's
``EVENT_PUBLISHER_TYPE``; see ``tidings.publishers``) and starts it, so a bad setting or an
unreachable broker stops the start-up with its error. On shutdown it drains the relays (what
was committed gets published, within ``timeout``), closes the bus, then the publisher.

``RequestContextMiddleware`` (pure ASGI: Starlette apps use it the same way) reads
``X-Request-ID``, ``X-Correlation-ID``, ``traceparent`` and the user and tenant headers, and
enters ``tidings.context.event_context`` for the request, so every event written to the outbox
or published while handling it carries them; the response says ``X-Correlation-ID`` (the
header's, else the request id, else a new id) and ``X-Request-ID``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.context import event_context
from tidings.event import new_id
from tidings.outbox import Relay
from tidings.publishers import Publisher, open_publisher

__all__ = [
    "RequestContextMiddleware",
    "Tidings",
    "get_publisher",
    "get_tidings",
    "lifespan",
    "running",
]

STATE_KEY = "tidings"
_MAX_HEADER = 200  # longer header values are cut: ids, not payloads


@dataclass(slots=True)
class Tidings:
    """What the lifespan runs; ``app.state.tidings``."""

    publisher: Publisher
    relays: list[Relay] = field(default_factory=list)
    bus: Any = None


@contextlib.asynccontextmanager
async def running(
    publisher: Publisher | str | None = None,
    *,
    relays: Sequence[Relay] = (),
    bus: Any = None,
    timeout: float = 5.0,
) -> AsyncIterator[Tidings]:
    """Start ``publisher`` (default: the environment's) and ``relays``; on exit drain the relays,
    close ``bus`` and the publisher. Use it inside your own lifespan, or use ``lifespan``."""
    pub: Publisher = (
        publisher
        if publisher is not None and not isinstance(publisher, str)
        else open_publisher(publisher)
    )
    await pub.start()
    started: list[Relay] = []
    try:
        for relay in relays:
            await relay.astart()
            started.append(relay)
        yield Tidings(pub, list(relays), bus)
    finally:
        for relay in reversed(started):
            await relay.astop(timeout)
        if bus is not None:
            close = getattr(bus, "aclose", None)
            if close is not None:
                await close(timeout)
            else:
                bus.close(timeout)
        await pub.close(timeout)


def lifespan(
    publisher: Publisher | str | None = None,
    *,
    relays: Sequence[Relay] = (),
    bus: Any = None,
    timeout: float = 5.0,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan for ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``; see ``running``."""

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        async with running(publisher, relays=relays, bus=bus, timeout=timeout) as state:
            setattr(app.state, STATE_KEY, state)
            yield

    return run


def get_tidings(request: HTTPConnection) -> Tidings:
    state = getattr(request.app.state, STATE_KEY, None)
    if state is None:
        raise RuntimeError(
            "tidings is not running in this app: pass lifespan=tidings.integrations.fastapi."
            "lifespan(...) to FastAPI()/Starlette(), or set app.state.tidings in your own lifespan"
        )
    assert isinstance(state, Tidings)
    return state


def get_publisher(request: HTTPConnection) -> Publisher:
    """``Depends(get_publisher)``: the publisher the lifespan started (seed 004's dependency);
    a Starlette endpoint calls ``get_publisher(request)``."""
    return get_tidings(request).publisher


UserOf = Callable[[Scope], str | None]


class RequestContextMiddleware:
    """Copy request metadata onto every event emitted while the request is handled.

    ``user`` / ``tenant`` read the ids from the scope (e.g. ``lambda scope:
    scope["user"].identity`` behind Starlette's AuthenticationMiddleware); by default they
    come from ``user_header`` / ``tenant_header``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        user_header: str = "x-user-id",
        tenant_header: str = "x-tenant-id",
        user: UserOf | None = None,
        tenant: UserOf | None = None,
    ) -> None:
        self.app = app
        self.user_header = user_header.lower().encode()
        self.tenant_header = tenant_header.lower().encode()
        self.user = user
        self.tenant = tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, str] = {}
        for name, value in scope.get("headers", ()):
            text = value.decode("latin-1").strip()[:_MAX_HEADER]
            if text:
                headers[name.lower()] = text
        request_id = headers.get(b"x-request-id") or new_id()
        correlation_id = headers.get(b"x-correlation-id") or request_id
        user = self.user(scope) if self.user is not None else headers.get(self.user_header)
        tenant = self.tenant(scope) if self.tenant is not None else headers.get(self.tenant_header)
        extra = [
            (b"x-correlation-id", correlation_id.encode("latin-1")),
            (b"x-request-id", request_id.encode("latin-1")),
        ]

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", ())}
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        *(h for h in extra if h[0] not in present),
                    ],
                }
            await send(message)

        with event_context(
            correlation_id=correlation_id,
            request_id=request_id,
            user_id=None if user is None else str(user),
            tenant_id=None if tenant is None else str(tenant),
            traceparent=headers.get(b"traceparent"),
        ):
            await self.app(scope, receive, send_with_ids)
