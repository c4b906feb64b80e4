"""tidings.integrations.fastapi: the publisher dependency, the lifespan, request metadata on
every event; the same pieces in a plain Starlette app."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.outbox.conftest import Recorder, create_sqlite
from tidings.event import Event
from tidings.integrations.fastapi import (
    RequestContextMiddleware,
    get_publisher,
    get_tidings,
    lifespan,
)
from tidings.outbox import Outbox, Relay
from tidings.publishers import MemoryPublisher, Publisher, PublisherError

PublisherDep = Annotated[Publisher, Depends(get_publisher)]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class LinkCreated(Event, type="fastapi.test.link_created"):
    link_id: str


def _app(publisher: Publisher, relays: list[Relay] | None = None) -> FastAPI:
    app = FastAPI(lifespan=lifespan(publisher, relays=relays or []))
    app.add_middleware(RequestContextMiddleware)

    @app.post("/links/{link_id}")
    async def create(link_id: str, pub: PublisherDep) -> dict[str, str]:
        event = LinkCreated(link_id=link_id, aggregate_id=link_id)
        await pub.publish(event)
        return {"event_id": event.id}

    return app


def test_the_dependency_yields_the_started_publisher_and_events_carry_the_request() -> None:
    pub = MemoryPublisher()
    with TestClient(_app(pub)) as client:
        resp = client.post(
            "/links/l1",
            headers={
                "X-Request-ID": "req-1",
                "X-Correlation-ID": "corr-1",
                "traceparent": TRACEPARENT,
                "X-User-ID": "u-1",
                "X-Tenant-ID": "t-1",
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-correlation-id"] == "corr-1"
        assert resp.headers["x-request-id"] == "req-1"
        plain = client.post("/links/l2")
        generated = plain.headers["x-correlation-id"]
        assert generated and plain.headers["x-request-id"] == generated
    first, second = pub.get_events()
    assert (first.correlation_id, first.request_id, first.user_id, first.tenant_id) == (
        "corr-1",
        "req-1",
        "u-1",
        "t-1",
    )
    assert first.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first.extensions == {"traceparent": TRACEPARENT}
    assert second.correlation_id == generated and second.user_id is None


def test_a_bad_publisher_setting_stops_the_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENT_PUBLISHER_TYPE", "redpanda")
    monkeypatch.delenv("REDPANDA_BROKERS", raising=False)
    monkeypatch.delenv("TIDINGS_PUBLISHER", raising=False)
    app = FastAPI(lifespan=lifespan())
    with pytest.raises(PublisherError, match="REDPANDA_BROKERS"), TestClient(app):
        pass


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield create_sqlite(tmp_path / "app.db")


def test_lifespan_runs_the_relay_and_drains_it_at_shutdown(sqlite_url: str) -> None:
    got = Recorder()
    relay = Relay(sqlite_url, got, poll_interval=30.0)  # the drain publishes, not the poll
    outbox = Outbox()
    app = _app(MemoryPublisher(), [relay])

    @app.post("/outbox/{link_id}")
    def write(link_id: str) -> dict[str, str]:
        conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
        with conn:
            conn.execute("INSERT INTO links (id, amount) VALUES (?, 1)", (link_id,))
            event = LinkCreated(link_id=link_id, aggregate_id=link_id)
            outbox.add(conn, event)
        conn.close()
        return {"event_id": event.id}

    with TestClient(app) as client:
        assert app.state.tidings.relays == [relay] and relay.running
        ids = [
            client.post(f"/outbox/o{i}", headers={"X-Correlation-ID": "c-x"}).json()["event_id"]
            for i in range(3)
        ]
    assert not relay.running
    assert got.ids() == ids  # drained at shutdown
    assert {e.correlation_id for e in got.events} == {"c-x"}


def test_a_starlette_app_uses_the_same_pieces() -> None:
    pub = MemoryPublisher()

    async def create(request: Request) -> JSONResponse:
        await get_publisher(request).publish(LinkCreated(link_id="s1"))
        return JSONResponse({"ok": True, "relays": len(get_tidings(request).relays)})

    app = Starlette(routes=[Route("/links", create, methods=["POST"])], lifespan=lifespan(pub))
    app.add_middleware(RequestContextMiddleware, user=lambda scope: "from-scope")
    with TestClient(app) as client:
        resp = client.post("/links", headers={"X-Correlation-ID": "sc-1"})
        assert resp.json() == {"ok": True, "relays": 0}
        assert resp.headers["x-correlation-id"] == "sc-1"
    (event,) = pub.get_events()
    assert (event.correlation_id, event.user_id) == ("sc-1", "from-scope")


def test_without_the_lifespan_the_dependency_says_what_is_missing() -> None:
    app = FastAPI()

    @app.get("/")
    async def root(pub: PublisherDep) -> dict[str, str]:
        return {}

    with TestClient(app) as client, pytest.raises(RuntimeError, match="lifespan"):
        client.get("/")
