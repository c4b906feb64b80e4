"""More webhook delivery rules through `tidings serve`, against real local receivers.

Complements test_webhooks.py: CloudEvents binary mode, auto-disable after ``failure_window``,
the SSRF guard on config endpoints, TLS verification, auth and extra headers, secrets kept out
of the API and the log, and the whole flow on PostgreSQL with a worker lease taken over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp import web
from cloudevents.v1.http import from_http  # cloudevents 2.x keeps the 1.x API under v1
from standardwebhooks.webhooks import Webhook

from tests.conftest import require_service
from tests.server.conftest import Received, Receiver, Running, free_port
from tests.server.test_webhooks import (
    SECRET,
    deliveries,
    events_config,
    one_event,
    wait_until,
    webhook,
)
from tests.webhooks.conftest import BASE, HOST, PORT, pg_sql
from tidings.config import load
from tidings.event import Event
from tidings.server.service import Service

Start = Callable[..., Awaitable[Running]]
MakeReceiver = Callable[..., Awaitable[Receiver]]


async def dead_rows(app: Running, count: int = 1) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return len(await deliveries(app, state="dead")) >= count

    await wait_until(enough, what=f"{count} dead deliveries")
    return await deliveries(app, state="dead")


async def attempt_log(app: Running, delivery_id: str) -> list[dict[str, Any]]:
    status, detail = await app.get(f"/deliveries/{delivery_id}")
    assert status == 200, detail
    log: list[dict[str, Any]] = detail["attempt_log"]
    return log


# ---- CloudEvents binary mode ---------------------------------------------------------------


async def test_cloudevents_binary_delivery_verifies_and_parses(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve(
        events_config(format="cloudevents-binary", **webhook("bin", rec.url, secret=SECRET))
    )
    status, body = await app.post(
        "/events",
        {"type": "shop.order.placed", "source": "/shop", "subject": "o-1", "data": {"total": 3}},
    )
    assert status == 202, body
    await rec.wait_for(1)
    got = rec.requests[0]
    assert Webhook(SECRET).verify(got.body, got.headers) == {"total": 3}
    ce = from_http(got.headers, got.body)
    assert ce["id"] == body["ids"][0] == got.headers["ce-id"]
    assert (ce["type"], ce["source"], ce["subject"]) == ("shop.order.placed", "/shop", "o-1")
    assert ce.data == {"total": 3}
    assert got.headers["Content-Type"] == "application/json"


# ---- failing endpoints ---------------------------------------------------------------------


async def test_failure_window_disables_an_endpoint_failing_too_long(
    serve: Start, receiver: MakeReceiver
) -> None:
    async def down(req: Received, n: int) -> web.StreamResponse:
        return web.Response(status=500)

    rec = await receiver(down)
    app = await serve(
        events_config(failure_window="0.3s", max_retries=50, **webhook("flaky", rec.url))
    )
    await one_event(app)

    async def disabled() -> bool:
        status, ep = await app.get("/endpoints/flaky")
        return status == 200 and ep["enabled"] is False

    await wait_until(disabled, what="the failing endpoint to be disabled")
    status, ep = await app.get("/endpoints/flaky")
    assert status == 200
    assert "failing without a success for 0.3s" in ep["disabled_reason"]
    first, last = rec.requests[0].at, rec.requests[-1].at
    assert last - first >= 0.3, "disabled only once it had failed for the whole window"
    count = len(rec.requests)
    await one_event(app)
    await asyncio.sleep(0.3)
    assert len(rec.requests) <= count + 1, "a disabled endpoint is not called any more"


async def test_guard_config_endpoints_refuses_a_loopback_yaml_endpoint(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve(events_config(guard_config_endpoints=True, **webhook("local", rec.url)))
    await one_event(app)
    (dead,) = await dead_rows(app)
    (attempt,) = await attempt_log(app, dead["id"])
    assert attempt["status_code"] is None
    assert "127.0.0.1" in attempt["error"] and "loopback" in attempt["error"]
    assert "allow_networks" in attempt["error"], "the error says how to allow it"
    assert rec.requests == [], "no request reaches the guarded address"


async def test_guard_config_endpoints_with_allow_networks_delivers(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve(
        events_config(
            guard_config_endpoints=True,
            allow_networks=["127.0.0.1/32"],
            **webhook("local", rec.url),
        )
    )
    await one_event(app)
    await rec.wait_for(1)


# ---- TLS -----------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no CA signed (the check must refuse it)."""
    pytest.importorskip("cryptography", reason="generates the self-signed certificate")
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
async def https_receiver(tmp_path: Path) -> Any:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    got: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}/hook", got
    finally:
        await runner.cleanup()


async def test_https_with_a_self_signed_certificate_fails_verification(
    serve: Start, https_receiver: tuple[str, list[bytes]]
) -> None:
    url, got = https_receiver
    app = await serve(events_config(max_retries=0, **webhook("tls", url)))
    await one_event(app)
    (dead,) = await dead_rows(app)
    (attempt,) = await attempt_log(app, dead["id"])
    assert attempt["status_code"] is None
    assert "certificate verify failed" in attempt["error"].lower(), attempt["error"]
    assert got == [], "no request body reaches a server whose certificate failed"


# ---- headers: auth and extra ---------------------------------------------------------------


async def test_auth_and_extra_headers_arrive(serve: Start, receiver: MakeReceiver) -> None:
    bearer, basic, keyed = await receiver(), await receiver(), await receiver()
    endpoints = {
        "bearer": {"url": bearer.url, "events": ["**"], "auth": {"bearer": "tok-1"}},
        "basic": {
            "url": basic.url,
            "events": ["**"],
            "auth": {"username": "ann", "password": "pw:1"},
            "headers": {"X-Team": "core", "X-Trace": "t-9"},
        },
        "keyed": {
            "url": keyed.url,
            "events": ["**"],
            "auth": {"header": "X-Api-Key", "value": "k-7"},
        },
    }
    app = await serve({"events": {"enabled": True, "webhooks": endpoints}})
    await one_event(app)
    for rec in (bearer, basic, keyed):
        await rec.wait_for(1)
    assert bearer.requests[0].headers["Authorization"] == "Bearer tok-1"
    # base64("ann:pw:1"): the password may hold a colon, only the first one splits
    assert basic.requests[0].headers["Authorization"] == "Basic YW5uOnB3OjE="
    assert basic.requests[0].headers["X-Team"] == "core"
    assert basic.requests[0].headers["X-Trace"] == "t-9"
    assert keyed.requests[0].headers["X-Api-Key"] == "k-7"
    assert "Authorization" not in keyed.requests[0].headers


# ---- secrets stay secret -------------------------------------------------------------------

HIDDEN = {
    "secret": SECRET,
    "bearer": "bearer-SENTINEL-1",
    "password": "password-SENTINEL-2",
    "api key": "apikey-SENTINEL-3",
    "extra header": "header-SENTINEL-4",
}


async def test_secrets_never_appear_in_the_api_or_the_log(
    serve: Start, receiver: MakeReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def refuse(req: Received, n: int) -> web.StreamResponse:
        return web.Response(status=410, text="gone")

    ok, bad = await receiver(), await receiver(refuse)
    common = {"events": ["**"], "secret": SECRET, "headers": {"X-Token": HIDDEN["extra header"]}}
    endpoints = {
        "a": {**common, "url": ok.url, "auth": {"bearer": HIDDEN["bearer"]}},
        "b": {**common, "url": bad.url, "auth": {"username": "u", "password": HIDDEN["password"]}},
        "c": {
            **common,
            "url": ok.url + "?c",
            "auth": {"header": "X-K", "value": HIDDEN["api key"]},
        },
    }
    app = await serve({"events": {"enabled": True, "max_retries": 0, "webhooks": endpoints}})
    await one_event(app)
    await ok.wait_for(2)
    await dead_rows(app)  # b got 410 (dead, disabled, logged): the error paths have run
    seen = [await app.get("/endpoints"), await app.get("/deliveries"), await app.get("/health")]
    for ep in ("a", "b", "c"):
        seen.append(await app.get(f"/endpoints/{ep}"))
    for row in await deliveries(app):
        seen.append(await app.get(f"/deliveries/{row['id']}"))
    status, metrics = await app.get("/metrics")
    assert status == 200
    shown = repr(seen) + str(metrics)
    for what, value in HIDDEN.items():
        assert value not in shown, f"the {what} leaked through the API"
        assert value not in caplog.text, f"the {what} leaked into the log"
    status, listed = await app.get("/endpoints")
    assert status == 200
    assert {ep["auth"] for ep in listed["endpoints"]} == {"***"}
    assert all(ep["signed"] for ep in listed["endpoints"])
    assert "webhook endpoint b disabled" in caplog.text, "the log did record the failure"


async def test_a_password_in_the_endpoint_url_is_not_shown(serve: Start) -> None:
    url = "http://hooks:url-SENTINEL-5@127.0.0.1:9/hook"
    app = await serve({"events": {"enabled": True, "webhooks": {"u": {"url": url}}}})
    status, body = await app.get("/endpoints/u")
    assert status == 200
    assert "url-SENTINEL-5" not in str(body)


# ---- server.lease vs timeouts --------------------------------------------------------------


async def test_a_lease_the_config_accepts_lets_deliveries_go(
    serve: Start, receiver: MakeReceiver
) -> None:
    """The config accepts any lease above the timeout; the worker's guard against outliving
    the lease must then still let requests start (it once needed lease > timeout + 1 s)."""
    rec = await receiver()
    config = events_config(timeout="1s", **webhook("l", rec.url))
    app = await serve({**config, "server": {"lease": "1.5s"}})
    await one_event(app)
    await rec.wait_for(1, timeout=3)


# ---- PostgreSQL, and a worker lease taken over ----------------------------------------------


@pytest.fixture
def pg_store() -> Iterator[str]:
    """A fresh migrated schema in a fresh database, as tests/webhooks/conftest.py makes them."""
    require_service("PostgreSQL", HOST, PORT)
    migrate = pytest.importorskip("tidings.store.migrate").migrate
    name = f"tidings_test_{uuid.uuid4().hex[:12]}"
    pg_sql(f"{BASE}/postgres", f'CREATE DATABASE "{name}"')
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pg_sql(f"{BASE}/{name}", f'CREATE SCHEMA "{schema}"')
    url = f"{BASE}/{name}?options=-csearch_path%3D{schema}"
    migrate(url)
    try:
        yield url
    finally:
        pg_sql(f"{BASE}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_serve_on_postgresql_delivers(
    serve: Start, receiver: MakeReceiver, pg_store: str
) -> None:
    rec = await receiver()
    app = await serve({"store": {"url": pg_store}, **events_config(**webhook("pg", rec.url))})
    status, body = await app.post(
        "/events", [{"type": "a.b", "source": "t", "data": {"n": i}} for i in range(20)]
    )
    assert status == 202 and body["deliveries"] == 20
    await rec.wait_for(20)

    async def all_delivered() -> bool:
        return len(await deliveries(app, state="delivered")) == 20

    await wait_until(all_delivered, what="20 deliveries marked delivered on PostgreSQL")
    assert {r.headers["tidings-event-id"] for r in rec.requests} == set(body["ids"])


async def test_lease_takeover_on_postgresql_delivers_every_event(
    serve: Start, receiver: MakeReceiver, pg_store: str, tmp_path: Path
) -> None:
    """Service A claims deliveries and dies without handing them back; service B, on the same
    database, takes them over once their lease ends. Every event arrives, taken-over ones with
    the message id A already used (so receivers can drop the repeat)."""
    gate = asyncio.Event()

    async def held(req: Received, n: int) -> web.StreamResponse:
        await gate.wait()  # A's requests are still in flight when A dies
        return web.Response(status=200)

    rec = await receiver(held)
    config = {
        "store": {"url": pg_store},
        "server": {"lease": "3s", "port": free_port()},
        **events_config(timeout="1s", **webhook("pg", rec.url, max_in_flight=4)),
    }
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(config))
    a = Service(load(path, env={}))
    await a.start()
    try:
        accepted = await a.aaccept([Event(type="a.b", data={"n": i}) for i in range(12)])
        await rec.wait_for(4)  # A holds four in flight, eight wait in the queue
        # A dies: nothing it claimed is released, no outcome is recorded.
        a.queue.release = lambda claimed: None  # type: ignore[method-assign]
        a.queue.finish = lambda outcomes: 0  # type: ignore[method-assign]
        await a.worker.stop(0.05)
    finally:
        a.queue.close()
        a.store.close()
    taken = set(rec.message_ids())
    gate.set()
    b = await serve({**config, "server": {**config["server"], "port": free_port()}})
    status, body = await b.post(
        "/events", [{"type": "a.b", "source": "t", "data": {"n": i}} for i in range(12, 15)]
    )
    assert status == 202
    every = set(accepted.ids) | set(body["ids"])

    async def all_delivered() -> bool:
        return len(await deliveries(b, state="delivered")) == 15

    await wait_until(all_delivered, timeout=15, what="all 15 deliveries delivered by B")
    assert {r.headers["tidings-event-id"] for r in rec.requests} == every
    for mid in taken:  # sent again by B with the same message id, once A's lease had ended
        first, again = (r.at for r in rec.requests if r.headers["webhook-id"] == mid)
        assert again - first >= 2.5, f"{mid} taken over {again - first:.2f}s in, lease is 3s"


async def test_killed_database_connections_lose_nothing_on_postgresql(
    serve: Start, receiver: MakeReceiver, pg_store: str
) -> None:
    """Every connection of the service's database is killed (pg_terminate_backend), twice,
    while 600 events are being delivered: every event still arrives, each message id with a 200
    at most once more than needed (a repeat only where an outcome could not be recorded)."""
    rec = await receiver()
    app = await serve(
        {"store": {"url": pg_store}, **events_config(**webhook("pg", rec.url, max_in_flight=8))}
    )
    database = urlsplit(pg_store).path.lstrip("/")

    def kill_connections() -> int:
        rows = pg_sql(
            f"{BASE}/postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
        return len(rows)

    sent: list[str] = []
    for start in range(0, 600, 100):
        for _ in range(20):  # a POST that meets a dead connection answers 503: send it again
            batch = [{"type": "a.b", "data": {"n": n}} for n in range(start, start + 100)]
            status, body = await app.post("/events", batch)
            if status == 202:
                sent += body["ids"]
                break
            assert status == 503, body
            await asyncio.sleep(0.1)
        if start in (100, 300):
            assert kill_connections() > 0
    assert len(sent) == 600
    deadline = time.monotonic() + 30
    while {r.headers["tidings-event-id"] for r in rec.requests} < set(sent):
        assert time.monotonic() < deadline, "events lost after the database connections died"
        await asyncio.sleep(0.1)
    status, health = await app.get("/health")
    assert status == 200 and health["store"]["reachable"] is True
