"""API keys with scopes: from the config (the key or its SHA-256, several at once), made through
the API (shown once, stored hashed, revocable), the old single ``server.api_key`` as admin, and
the config's checks of ``server.api_keys``."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.server.conftest import Running
from tidings.config import ConfigError, load
from tidings.server.app import create_app
from tidings.server.auth import require
from tidings.server.service import Service

Start = Callable[..., Awaitable[Running]]

READER = "reader-key-0123456789abcdef"
PUBLISHER = "publisher-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
ADMIN_NEXT = "admin-key-next-0123456789abcdef"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keyed_config() -> dict[str, object]:
    return {
        "server": {
            "api_keys": [
                {"name": "dash", "key": READER, "scopes": ["read"]},
                {"name": "app", "key": PUBLISHER, "scopes": ["publish"]},
                {
                    "name": "ops",
                    "sha256": hashlib.sha256(ADMIN.encode()).hexdigest(),
                    "scopes": ["admin"],
                },
                {"name": "ops-next", "key": ADMIN_NEXT, "scopes": ["admin"]},
            ]
        }
    }


async def test_scopes_decide_what_a_key_may_do(serve: Start) -> None:
    app = await serve(keyed_config())
    event = {"type": "keys.tested"}
    status, body = await app.get("/events")
    assert status == 401 and body["type"] == "urn:tidings:problem:unauthorized", body
    status, body = await app.get("/events", headers=bearer("wrong-" + READER))
    assert status == 401, body
    status, body = await app.get("/events?bogus=1")
    assert status == 401, "the key is checked first: a stranger learns nothing of the routes"

    assert (await app.get("/events", headers=bearer(READER)))[0] == 200
    status, body = await app.post("/events", event, headers=bearer(READER))
    assert status == 403 and body["type"] == "urn:tidings:problem:forbidden", body
    assert "'dash'" in body["detail"] and "publish" in body["detail"], body

    assert (await app.post("/events", event, headers={"X-API-Key": PUBLISHER}))[0] == 202
    status, body = await app.get("/events", headers={"X-API-Key": PUBLISHER})
    assert status == 403 and "read" in body["detail"], body

    for key in (ADMIN, ADMIN_NEXT):  # two admin keys at once: one can rotate out
        status, body = await app.get("/events", headers=bearer(key))
        assert status == 200 and len(body["events"]) == 1, body
        assert (await app.get("/api-keys", headers=bearer(key)))[0] == 200
    status, _ = await app.get("/api-keys", headers=bearer(READER))
    assert status == 403
    status, _ = await app.get("/health")
    assert status == 200, "health stays open for probes"


async def test_the_single_api_key_is_an_admin_key(serve: Start) -> None:
    app = await serve({"server": {"api_key": "legacy-key-1"}})
    status, body = await app.post("/api-keys", {"name": "x", "scopes": ["read"]},
                                  headers=bearer("legacy-key-1"))  # fmt: skip
    assert status == 201, body


async def test_a_key_made_through_the_api_is_shown_once_and_stored_hashed(
    serve: Start, tmp_path: Path
) -> None:
    app = await serve(keyed_config())
    status, made = await app.post(
        "/api-keys", {"name": "ci", "scopes": ["read", "publish"]}, headers=bearer(ADMIN)
    )
    assert status == 201, made
    key = made["key"]
    assert key.startswith("tdk_") and len(key) > 40, made
    assert made["prefix"] == key[:8] and made["scopes"] == ["read", "publish"], made

    assert (await app.get("/events", headers=bearer(key)))[0] == 200
    assert (await app.post("/events", {"type": "k.t"}, headers=bearer(key)))[0] == 202
    assert (await app.get("/api-keys", headers=bearer(key)))[0] == 403

    status, listed = await app.get("/api-keys", headers=bearer(ADMIN))
    assert status == 200, listed
    assert key not in str(listed), "a listing never shows a key"
    names = {k["name"]: k["source"] for k in listed["api_keys"]}
    assert names == {"ci": "api", "dash": "config", "app": "config", "ops": "config",
                     "ops-next": "config"}, names  # fmt: skip

    with sqlite3.connect(tmp_path / "tidings.db") as db:
        rows = db.execute("SELECT name, sha256, prefix, scopes FROM tidings_api_keys").fetchall()
    assert rows == [("ci", hashlib.sha256(key.encode()).hexdigest(), key[:8], "read publish")]

    status, body = await app.post(
        "/api-keys", {"name": "ci", "scopes": ["read"]}, headers=bearer(ADMIN)
    )
    assert status == 409 and body["field"] == "name", body
    status, body = await app.post(
        "/api-keys", {"name": "bad", "scopes": ["root"]}, headers=bearer(ADMIN)
    )
    assert status == 400 and body["field"] == "scopes", body

    status, _ = await app.request("DELETE", f"/api-keys/{made['id']}", headers=bearer(ADMIN))
    assert status == 204
    status, body = await app.get("/events", headers=bearer(key))
    assert status == 401, "a revoked key opens nothing"
    status, body = await app.request("DELETE", "/api-keys/config:ops", headers=bearer(ADMIN))
    assert status == 409 and "config file" in body["detail"], body


async def test_a_stored_key_turns_auth_on_for_a_keyless_server(serve: Start) -> None:
    app = await serve()
    assert (await app.get("/events"))[0] == 200, "no key anywhere: open, as before"
    status, made = await app.post("/api-keys", {"name": "first", "scopes": ["admin"]})
    assert status == 201, made
    status, body = await app.get("/events")
    assert status == 401, body
    assert (await app.get("/events", headers=bearer(made["key"])))[0] == 200


@pytest.mark.parametrize(
    ("entry", "where", "words"),
    [
        ({"name": "a", "scopes": ["read"]}, "server.api_keys[0]", "exactly one of key"),
        ({"name": "a", "key": "k" * 20, "sha256": "0" * 64}, "server.api_keys[0]", "exactly one"),
        ({"name": "a", "key": "short"}, "server.api_keys[0].key", "16 characters"),
        ({"name": "a", "sha256": "xyz"}, "server.api_keys[0].sha256", "64 hex"),
        ({"name": "a", "key": "k" * 20, "scopes": ["root"]}, "server.api_keys[0].scopes", "read"),
    ],
)
def test_api_keys_config_is_checked(
    tmp_path: Path, entry: dict[str, object], where: str, words: str
) -> None:
    path = tmp_path / "tidings.yaml"
    path.write_text(yaml.safe_dump({"server": {"api_keys": [entry]}}))
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    message = str(caught.value)
    assert where in message and words in message, message
    assert "k" * 20 not in message, "a key is never echoed"


def test_api_keys_let_a_server_listen_beyond_loopback(tmp_path: Path) -> None:
    path = tmp_path / "tidings.yaml"
    path.write_text(
        "server:\n  host: 0.0.0.0\n  api_keys:\n"
        f"    - {{name: ops, key: {ADMIN}, scopes: [admin]}}\n"
    )
    settings = load(path, env={})
    assert settings.server.api_keys[0].name == "ops"
    assert ADMIN not in str(settings.redacted()), "redacted settings hide the key"


def test_require_guards_a_route_outside_the_route_table(tmp_path: Path) -> None:
    """What a stream or a dashboard page calls: the caller's key (or one it read from a
    cookie) checked for a scope, refusals as problem details."""
    path = tmp_path / "tidings.yaml"
    config = {"store": {"url": f"sqlite:///{tmp_path / 'r.db'}"}, **keyed_config()}
    path.write_text(yaml.safe_dump(config))
    app = create_app(Service(load(path, env={}), path))

    async def publish_only(request: Request) -> Response:
        who = await require(request, "publish")
        return PlainTextResponse(who.name)

    async def from_cookie(request: Request) -> Response:
        who = await require(request, "read", key=request.cookies.get("key", ""))
        return PlainTextResponse(who.name)

    app.router.routes.append(Route("/custom", publish_only))
    app.router.routes.append(Route("/page", from_cookie))
    with TestClient(app) as client:
        refused = client.get("/custom")
        assert refused.status_code == 401, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        refused = client.get("/custom", headers=bearer(READER))
        assert refused.status_code == 403 and refused.json()["field"] == "Authorization"
        allowed = client.get("/custom", headers=bearer(PUBLISHER))
        assert allowed.status_code == 200 and allowed.text == "app"
        assert client.get("/page", headers=bearer(READER)).status_code == 401, "cookie only"
        client.cookies.set("key", READER)
        page = client.get("/page")
        assert page.status_code == 200 and page.text == "dash", page.text
