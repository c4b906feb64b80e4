"""Triggers saved over HTTP, as an attacker holding the admin key would write them: an email
action's SMTP host or a webhook action's URL pointing inside the server's network is refused on
every path (POST, PUT, PATCH) by the SSRF guard, with the networks the operator trusts let by;
no secret of a definition comes back in a problem detail or a log line."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.server.conftest import Running, serve  # noqa: F401 - fixture, found by name
from tidings.triggers.actions import register_action, unregister_action

Start = Callable[..., Awaitable[Running]]
ADMIN = "admin-key-security-0123456789ab"
RW = {"Authorization": f"Bearer {ADMIN}"}

# where an SMTP session or a POST must never go from a definition sent over HTTP
INSIDE = [
    ("127.0.0.1", 6379),  # Redis on loopback
    ("169.254.169.254", 80),  # the cloud metadata service
    ("10.1.2.3", 25),
    ("::1", 5432),
    ("localhost", 25),  # a name resolving to loopback
    ("127.1", 6379),  # a legacy numeric spelling
]


def config(**events: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"server": {"api_keys": [{"name": "ops", "key": ADMIN,
                                                    "scopes": ["admin"]}]}}  # fmt: skip
    if events:
        out["events"] = events
    return out


def mail(host: str | None, port: int | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"type": "email", "to": "ops@example.com", "subject": "s",
                              "body": "b"}  # fmt: skip
    if host is not None:
        action["host"] = host
    if port is not None:
        action["port"] = port
    return action


def trigger(trigger_id: str, action: dict[str, Any]) -> dict[str, Any]:
    return {"id": trigger_id, "pattern": "sec.*", "actions": [action]}


async def _refused_everywhere(app: Running, action: dict[str, Any], field: str) -> None:
    """POST, PUT (new and existing) and PATCH all refuse ``action`` naming ``field``."""
    status, body = await app.post("/triggers", trigger("t-post", action), headers=RW)
    assert status == 422 and body["field"] == field, (action, status, body)
    assert "allow_networks" in body["detail"] or "URL" in body["detail"], body
    status, body = await app.request("PUT", "/triggers/t-put", trigger("t-put", action),
                                     headers=RW)  # fmt: skip
    assert status == 422 and body["field"] == field, (action, status, body)
    status, made = await app.post("/triggers", trigger("t-ok", {"type": "log"}), headers=RW)
    assert status in (201, 409), made
    status, body = await app.request("PUT", "/triggers/t-ok", trigger("t-ok", action), headers=RW)
    assert status == 422 and body["field"] == field, (action, status, body)
    status, body = await app.request("PATCH", "/triggers/t-ok", {"actions": [action]}, headers=RW)
    assert status == 422 and body["field"] == field, (action, status, body)
    status, body = await app.request(
        "PATCH", "/triggers/t-ok", {"compensation": action}, headers=RW
    )
    assert status == 422 and body["field"] == f"compensation.{field.rsplit('.', maxsplit=1)[-1]}", (
        body
    )
    status, kept = await app.get("/triggers/t-ok", headers=RW)
    assert kept["actions"] == [{"type": "log"}] and kept["version"] == 1, kept


@pytest.mark.parametrize(("host", "port"), INSIDE)
async def test_email_smtp_host_inside_the_network_is_refused_on_every_path(
    serve: Start,  # noqa: F811
    host: str,
    port: int,
) -> None:
    app = await serve(config())
    await _refused_everywhere(app, mail(host, port), "actions[0].host")


async def test_email_default_host_is_localhost_and_refused_too(serve: Start) -> None:  # noqa: F811
    app = await serve(config())
    await _refused_everywhere(app, mail(None), "actions[0].host")


async def test_email_host_in_allow_networks_is_accepted(serve: Start) -> None:  # noqa: F811
    app = await serve(config(allow_networks=["127.0.0.0/8"]))
    status, body = await app.post("/triggers", trigger("relay", mail("127.0.0.1", 2525)),
                                  headers=RW)  # fmt: skip
    assert status == 201, body
    status, body = await app.post("/triggers", trigger("meta", mail("169.254.169.254")),
                                  headers=RW)  # fmt: skip
    assert status == 422 and body["field"] == "actions[0].host", body


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:6379/",
        "http://[::1]:5432/",
        "http://localhost:4222/",
        "http://0x7f.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
async def test_webhook_url_inside_the_network_is_refused_on_every_path(
    serve: Start,  # noqa: F811
    url: str,
) -> None:
    app = await serve(config())
    await _refused_everywhere(app, {"type": "webhook", "url": url}, "actions[0].url")


async def test_webhook_url_secret_is_not_echoed_in_errors_or_logs(
    serve: Start,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = await serve(config())
    caplog.set_level(logging.DEBUG)
    for url in ("ftp://ops:s3cret-pw@hooks.example.com/x", "http://ops:s3cret-pw@10.0.0.9/x"):
        status, body = await app.post(
            "/triggers", trigger("leak", {"type": "webhook", "url": url}), headers=RW
        )
        assert status == 422 and body["field"] == "actions[0].url", body
        assert "s3cret-pw" not in str(body), body
    assert "s3cret-pw" not in caplog.text, caplog.text[-2000:]


PATHOLOGICAL = [
    ("(" * 40 + "true" + ")" * 40, "nested"),
    ("not " * 40 + "true", "nested"),
    ('data.name matches "(a)\\\\1"', "backreference"),  # (a+)+ runs on RE2: allowed
    ('data.name matches "' + "a" * 600 + '"', "matches"),
    ("data.x == 1 or " * 400 + "true", "characters"),
]


@pytest.mark.parametrize(("condition", "said"), PATHOLOGICAL)
async def test_pathological_conditions_are_refused_on_every_path(
    serve: Start,  # noqa: F811
    condition: str,
    said: str,
) -> None:
    app = await serve(config())
    bad = {**trigger("slow", {"type": "log"}), "condition": condition}
    status, body = await app.post("/triggers", bad, headers=RW)
    assert status == 422 and body["field"] == "condition", body
    status, body = await app.request("PUT", "/triggers/slow", bad, headers=RW)
    assert status == 422 and body["field"] == "condition", body
    status, made = await app.post("/triggers", trigger("slow", {"type": "log"}), headers=RW)
    assert status == 201, made
    status, body = await app.request(
        "PATCH", "/triggers/slow", {"condition": condition}, headers=RW
    )
    assert status == 422 and body["field"] == "condition", body
    assert "Traceback" not in body["detail"], body


async def test_definition_sizes_are_bounded(serve: Start) -> None:  # noqa: F811
    app = await serve(
        config(),
    )
    many = trigger("many", {"type": "log"})
    many["actions"] = [{"type": "log"}] * 1000
    status, body = await app.post("/triggers", many, headers=RW)
    assert status == 422 and body["field"] == "actions", body
    deep: Any = "x"
    for _ in range(20):  # options: at most 16 levels (a body: 64)
        deep = {"k": deep}
    status, body = await app.post(
        "/triggers",
        trigger("deep", {"type": "publish", "event_type": "a.b", "data": deep}),
        headers=RW,
    )
    assert status == 422 and body["field"].startswith("actions[0].data"), body
    huge = trigger("huge", {"type": "log"})
    huge["description"] = "x" * (2 * 1024 * 1024)
    status, body = await app.post("/triggers", huge, headers=RW)
    assert status == 413, (status, str(body)[:300])
    status, listed = await app.get("/triggers", headers=RW)
    assert [t["id"] for t in listed["triggers"]] == [], listed


class _Crm:
    """A plugin action whose options carry credentials under the names plugins use."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)

    async def run(self, ctx: Any) -> None:
        return None


CRM_SECRETS = {
    "client_secret": "s3cret-cs",
    "access_token": "s3cret-at",
    "apiKey": "s3cret-ak",
    "sasl_password": "s3cret-sp",
    "Authorization": "Bearer s3cret-au",
    "x-api-key": "s3cret-xk",
}


@pytest.fixture
def crm() -> Iterator[str]:
    register_action("sec_crm", _Crm)
    yield "sec_crm"
    unregister_action("sec_crm")


async def test_plugin_secrets_never_come_back_and_survive_a_round_trip(
    serve: Start,  # noqa: F811
    crm: str,
) -> None:
    app = await serve(config())
    action = {"type": crm, "password_env": "CRM_PASSWORD", **CRM_SECRETS}
    status, made = await app.post("/triggers", trigger("crm", action), headers=RW)
    assert status == 201, made
    status, one = await app.get("/triggers/crm", headers=RW)
    status, listed = await app.get("/triggers", headers=RW)
    for shown in (made, one, listed):
        assert "s3cret" not in str(shown), shown
    assert one["actions"][0]["password_env"] == "CRM_PASSWORD", one  # a variable's name
    # a GET sent back as it came would store "***" as the secret: refused, naming the field
    status, body = await app.request("PUT", "/triggers/crm", one, headers=RW)
    assert status == 422 and body["field"].startswith("actions[0]."), body
    # a PATCH of another field keeps the secrets as they were
    status, patched = await app.request("PATCH", "/triggers/crm", {"description": "d"},
                                        headers=RW)  # fmt: skip
    assert status == 200, patched
    rows = await asyncio.to_thread(_stored_options, app.config.parent / "tidings.db", "crm")
    assert all(rows[k] == v for k, v in CRM_SECRETS.items()), rows


def _stored_options(db: Path, trigger_id: str) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        (definition,) = conn.execute(
            "SELECT definition FROM tidings_triggers WHERE id = ?", (trigger_id,)
        ).fetchone()
    options: dict[str, Any] = json.loads(definition)["actions"][0]
    return options


async def test_a_config_reload_of_allow_networks_applies_to_the_next_write(
    serve: Start,  # noqa: F811
) -> None:
    app = await serve(config())
    relay = trigger("relay", mail("127.0.0.1", 2525))
    status, body = await app.post("/triggers", relay, headers=RW)
    assert status == 422 and body["field"] == "actions[0].host", body
    written = yaml.safe_load(app.config.read_text())
    app.config.write_text(yaml.safe_dump({**written, "events": {"allow_networks":
                                                                ["127.0.0.0/8"]}}))  # fmt: skip
    assert await app.service.reload_config()
    status, body = await app.post("/triggers", relay, headers=RW)
    assert status == 201, body
    app.config.write_text(yaml.safe_dump(written))
    assert await app.service.reload_config()
    status, body = await app.request("PATCH", "/triggers/relay", {"description": "x"}, headers=RW)
    assert status == 422 and body["field"] == "actions[0].host", body
