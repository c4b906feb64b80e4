"""Registering and changing endpoints through the API: the rules a URL, a header or a timeout
must meet whatever endpoint it lands on, and the config's defaults an endpoint inherits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.server.conftest import Receiver, Running

Start = Callable[..., Awaitable[Running]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

LOOPBACK = {"allow_networks": ["127.0.0.0/8"]}


def demo(url: str) -> dict[str, Any]:
    """A config whose file holds the endpoint ``demo`` (trusted, as YAML endpoints are)."""
    return {"events": {"enabled": True, "webhooks": {"demo": {"url": url, "events": ["**"]}}}}


# ---- a URL that arrives through the API is untrusted, on any endpoint ------------------------


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data", "http://[::1]:9/x", "http://localhost:9/"]
)
async def test_patch_of_a_config_endpoint_url_passes_the_ssrf_guard(serve: Start, url: str) -> None:
    app = await serve(demo("http://audit-service:8080/events"))
    status, body = await app.request("PATCH", "/endpoints/demo", {"url": url})
    assert (status, body["field"]) == (422, "url"), body
    status, ep = await app.get("/endpoints/demo")
    assert ep["url"] == "http://audit-service:8080/events", "the refused URL was not saved"


async def test_patch_of_an_api_endpoint_url_passes_the_ssrf_guard(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve({"events": {"allow_networks": ["127.0.0.1/32"]}})
    status, ep = await app.post("/endpoints", {"url": rec.url})
    assert status == 201, ep
    status, body = await app.request(
        "PATCH", f"/endpoints/{ep['id']}", {"url": "http://169.254.169.254/"}
    )
    assert (status, body["field"]) == (422, "url"), body


async def test_a_url_patched_onto_a_config_endpoint_is_guarded_at_connect_time(
    serve: Start, receiver: MakeReceiver
) -> None:
    """allow_networks lets the PATCH through; the URL came from the API, so the worker's
    connect-time guard (which catches a DNS answer that changes later) must check it too."""
    rec = await receiver()
    config = demo("http://audit-service:8080/events")
    config["events"].update(LOOPBACK)
    app = await serve(config)
    before = app.service.queue.endpoint("demo")
    assert before is not None and not before.guarded(guard_config_endpoints=False)
    status, body = await app.request("PATCH", "/endpoints/demo", {"url": rec.url})
    assert status == 200, body
    stored = app.service.queue.endpoint("demo")
    assert stored is not None and stored.url == rec.url
    assert stored.guarded(guard_config_endpoints=False), "an API URL is checked when connecting"


# ---- header rules, the same for the API and the config file ---------------------------------


@pytest.mark.parametrize(
    ("headers", "field", "words"),
    [
        ({"X-A": "a\r\nB: c"}, "headers.X-A", "line breaks"),
        ({"X-A": "a\nb"}, "headers.X-A", "line breaks"),
        ({"X-A": "a\x00b"}, "headers.X-A", "NUL"),
        ({"X-A": "bell\x07"}, "headers.X-A", "control character"),
        ({"X-A": "del\x7f"}, "headers.X-A", "control character"),
        ({"X A": "v"}, "headers.X A", "expected an HTTP header name"),
        ({"X:A": "v"}, "headers.X:A", "expected an HTTP header name"),
        ({"": "v"}, "headers.", "expected an HTTP header name"),
        ({"Host": "evil.example"}, "headers.Host", "Host"),
        ({"content-length": "0"}, "headers.content-length", "content-length"),
        ({"Transfer-Encoding": "chunked"}, "headers.Transfer-Encoding", "Transfer-Encoding"),
        ({"Connection": "close"}, "headers.Connection", "Connection"),
        ({"Content-Type": "text/plain"}, "headers.Content-Type", "format"),
        ({"Webhook-Signature": "v1,forged"}, "headers.Webhook-Signature", "signature"),
        ({"webhook-id": "m-1"}, "headers.webhook-id", "webhook-id"),
        ({"WEBHOOK-TIMESTAMP": "1"}, "headers.WEBHOOK-TIMESTAMP", "WEBHOOK-TIMESTAMP"),
        ({"tidings-attempt": "1"}, "headers.tidings-attempt", "tidings-attempt"),
        ({"ce-id": "x"}, "headers.ce-id", "ce-"),
    ],
)
async def test_endpoint_headers_are_refused_at_registration(
    serve: Start,
    receiver: MakeReceiver,
    headers: dict[str, str],
    field: str,
    words: str,
) -> None:
    rec = await receiver()
    app = await serve({"events": LOOPBACK})
    status, body = await app.post("/endpoints", {"url": rec.url, "headers": headers})
    assert (status, body.get("field")) == (422, field), body
    assert words.lower() in body["detail"].lower(), body
    assert body["detail"].startswith(f"{field}: "), body
    status, listed = await app.get("/endpoints")
    assert listed["endpoints"] == [], "nothing was registered"

    status, ep = await app.post("/endpoints", {"url": rec.url, "headers": {"X-Ok": "fine\tvalue"}})
    assert status == 201, ep
    status, body = await app.request("PATCH", f"/endpoints/{ep['id']}", {"headers": headers})
    assert (status, body.get("field")) == (422, field), body
    assert app.service.queue.endpoint(ep["id"]).headers == {"X-Ok": "fine\tvalue"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("auth", "field"),
    [
        ({"bearer": "t\r\nX-Evil: 1"}, "auth.bearer"),
        ({"username": "u", "password": "p\n"}, "auth.password"),
        ({"username": "u:v", "password": "p"}, "auth.username"),
        ({"header": "X-Key", "value": "k\r\n"}, "auth.value"),
        ({"header": "Bad Name", "value": "k"}, "auth.header"),
        ({"header": "Webhook-Signature", "value": "k"}, "auth.header"),
        ({"bearer": "t", "username": "u"}, "auth"),
    ],
)
async def test_auth_values_follow_the_header_rules(
    serve: Start, receiver: MakeReceiver, auth: dict[str, str], field: str
) -> None:
    rec = await receiver()
    app = await serve({"events": LOOPBACK})
    status, body = await app.post("/endpoints", {"url": rec.url, "auth": auth})
    assert (status, body.get("field")) == (422, field), body
    for key, value in auth.items():  # an auth value is a secret: never echoed (a name is not)
        if key != "header" and len(value) > 2:
            assert value not in body["detail"], body


# ---- a timeout must leave the lease room to spare --------------------------------------------


async def test_a_timeout_not_shorter_than_the_lease_is_refused(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve({"events": LOOPBACK, "server": {"lease": "30s"}})
    for timeout in (120, 30):
        status, body = await app.post("/endpoints", {"url": rec.url, "timeout": timeout})
        assert (status, body.get("field")) == (422, "timeout"), body
        assert "server.lease" in body["detail"] and "30s" in body["detail"], body
    status, ep = await app.post("/endpoints", {"url": rec.url, "timeout": 29})
    assert status == 201, ep
    status, body = await app.request("PATCH", f"/endpoints/{ep['id']}", {"timeout": 45})
    assert (status, body.get("field")) == (422, "timeout"), body
    assert "server.lease" in body["detail"], body
    status, body = await app.get(f"/endpoints/{ep['id']}")
    assert body["timeout"] == 29


# ---- endpoints registered through the API take the config's events.* defaults ---------------


async def test_api_endpoints_inherit_the_events_defaults(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    events = {
        **LOOPBACK,
        "timeout": "7s",
        "max_retries": 9,
        "retry_delay": "2s",
        "max_delay": "30s",
        "format": "cloudevents",
        "compress": "gzip",
        "jitter": 0.05,
        "failure_window": "1h",
    }
    app = await serve({"events": events})
    status, ep = await app.post("/endpoints", {"url": rec.url})
    assert status == 201, ep
    got = {k: ep[k] for k in ("timeout", "max_retries", "retry_delay", "max_delay")}
    assert got == {"timeout": 7.0, "max_retries": 9, "retry_delay": 2.0, "max_delay": 30.0}
    assert (ep["format"], ep["compress"]) == ("cloudevents", "gzip")
    assert (ep["jitter"], ep["failure_window"]) == (0.05, 3600.0)

    status, own = await app.post(
        "/endpoints", {"url": rec.url, "timeout": 3, "max_retries": 0, "format": "seed"}
    )
    assert status == 201, own
    assert (own["timeout"], own["max_retries"], own["format"]) == (3, 0, "seed")
    assert own["retry_delay"] == 2.0, "what the request leaves out still comes from the config"


async def test_an_api_endpoint_whose_retry_delay_passes_max_delay_is_refused(
    serve: Start, receiver: MakeReceiver
) -> None:
    rec = await receiver()
    app = await serve({"events": {**LOOPBACK, "max_delay": "10s", "retry_delay": "1s"}})
    status, body = await app.post("/endpoints", {"url": rec.url, "retry_delay": 60})
    assert (status, body.get("field")) == (422, "retry_delay"), body
    assert "max_delay" in body["detail"], body
