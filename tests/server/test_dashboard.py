"""The dashboard without a browser: login and its cookie, CSRF and origin checks on every
button, escaping of what arrives, id and pattern checks, and the pages kept out of the API's
description. The browser tests (test_dashboard_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from tests.server.conftest import free_port
from tidings.config import load
from tidings.server.app import create_app
from tidings.server.service import Service

READER = "dash-reader-key-0123456789"
ADMIN = "dash-admin-key-0123456789"
ORIGIN = {"Origin": "http://testserver"}


def _client(tmp_path: Path, keyed: bool, base_url: str = "http://testserver") -> TestClient:
    config: dict[str, object] = {
        "store": {"url": f"sqlite:///{tmp_path / 'dash.db'}"},
        "server": {"sender_process": False},
        "events": {
            "enabled": True,
            "max_retries": 0,
            "webhooks": {
                # nothing listens there: its deliveries die at once
                "shop": {"url": f"http://127.0.0.1:{free_port()}/hook", "events": ["**"]}
            },
        },
    }
    if keyed:
        config["server"] = {
            "sender_process": False,
            "api_keys": [
                {"name": "viewer", "key": READER, "scopes": ["read"]},
                {"name": "ops", "key": ADMIN, "scopes": ["admin"]},
            ],
        }
    path = tmp_path / "tidings.yaml"
    path.write_text(yaml.safe_dump(config))
    app = create_app(Service(load(path, env={}), path))
    return TestClient(app, base_url=base_url, follow_redirects=False)


@pytest.fixture
def open_client(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path, keyed=False) as client:
        yield client


@pytest.fixture
def keyed_client(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path, keyed=True) as client:
        yield client


def _token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def _login(client: TestClient, key: str) -> None:
    token = _token(client.get("/ui/login").text)
    answer = client.post("/ui/login", data={"key": key, "csrf": token}, headers=ORIGIN)
    assert answer.status_code == 303, answer.text


def test_without_keys_there_is_no_login(open_client: TestClient) -> None:
    page = open_client.get("/")
    assert page.status_code == 200, page.text
    assert "Live events" in page.text and "Log out" not in page.text
    assert "no login is needed" in open_client.get("/ui/login").text


def test_login_refuses_a_wrong_key_and_keeps_a_right_one_in_a_strict_cookie(
    keyed_client: TestClient,
) -> None:
    client = keyed_client
    first = client.get("/")
    assert first.status_code == 303 and first.headers["location"] == "/ui/login"
    token = _token(client.get("/ui/login").text)
    wrong = client.post("/ui/login", data={"key": "wrong-" + READER, "csrf": token}, headers=ORIGIN)
    assert wrong.status_code == 401, wrong.text
    assert "not valid" in wrong.text and 'name="key"' in wrong.text
    assert "tidings_key" not in wrong.headers.get("set-cookie", "")
    right = client.post("/ui/login", data={"key": READER, "csrf": token}, headers=ORIGIN)
    assert right.status_code == 303, right.text
    cookie = right.headers["set-cookie"]
    assert cookie.startswith("tidings_key="), cookie
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/"):
        assert attribute.lower() in cookie.lower(), cookie
    assert "secure" not in cookie.lower(), "plain http: no Secure flag"
    assert client.get("/").status_code == 200
    # the cookie reads the API (GET: the live stream, pages) but never writes through it
    assert client.get("/events").status_code == 200
    written = client.post("/events", json={"type": "dash.cookie", "source": "/t"})
    assert written.status_code == 401, written.text
    page = client.get("/")
    logout = client.post("/ui/logout", data={"csrf": _token(page.text)}, headers=ORIGIN)
    assert logout.status_code == 303
    assert (
        'tidings_key=""' in logout.headers["set-cookie"]
        or "Max-Age=0" in logout.headers["set-cookie"]
    ), logout.headers["set-cookie"]


def test_the_key_cookie_is_secure_over_https(tmp_path: Path) -> None:
    with _client(tmp_path, keyed=True, base_url="https://testserver") as client:
        token = _token(client.get("/ui/login").text)
        answer = client.post(
            "/ui/login",
            data={"key": READER, "csrf": token},
            headers={"Origin": "https://testserver"},
        )
        assert answer.status_code == 303, answer.text
        assert "secure" in answer.headers["set-cookie"].lower(), answer.headers["set-cookie"]


def test_a_button_needs_the_csrf_token_its_origin_and_an_admin_key(
    keyed_client: TestClient,
) -> None:
    client = keyed_client
    _login(client, ADMIN)
    token = _token(client.get("/ui/endpoints/shop").text)
    for data, headers, field in (
        ({}, ORIGIN, "CSRF"),
        ({"csrf": "x" * 43}, ORIGIN, "CSRF"),
        ({"csrf": token}, {"Origin": "http://evil.example"}, "cross-origin"),
        ({"csrf": token}, {"Referer": "http://evil.example/page"}, "cross-origin"),
    ):
        refused = client.post("/ui/endpoints/shop/disable", data=data, headers=headers)
        assert refused.status_code == 403, (data, headers, refused.text)
        assert field in refused.text, refused.text
    assert 'id="ep-state">enabled' in client.get("/ui/endpoints/shop").text, "nothing changed"
    done = client.post("/ui/endpoints/shop/disable", data={"csrf": token}, headers=ORIGIN)
    assert done.status_code == 303 and done.headers["location"].endswith("?done=disabled")
    assert 'id="ep-state">disabled' in client.get("/ui/endpoints/shop").text
    # a read-only key sees the pages without buttons, and a button's POST is refused
    _login(client, READER)
    seen = client.get("/ui/endpoints/shop").text
    assert 'id="ep-state"' in seen and 'id="enable"' not in seen, seen
    refused = client.post("/ui/endpoints/shop/enable", data={"csrf": token}, headers=ORIGIN)
    assert refused.status_code == 403 and "admin" in refused.text, refused.text


def test_rotate_secret_shows_the_new_secret_once(open_client: TestClient) -> None:
    token = _token(open_client.get("/ui/endpoints/shop").text)
    answer = open_client.post(
        "/ui/endpoints/shop/rotate-secret", data={"csrf": token}, headers=ORIGIN
    )
    assert answer.status_code == 200, answer.text
    secret = re.search(r'id="new-secret">(whsec_[A-Za-z0-9+/=]+)<', answer.text)
    assert secret, answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert secret.group(1) not in open_client.get("/ui/endpoints/shop").text


def test_what_arrives_is_escaped(open_client: TestClient) -> None:
    hostile = "<script>alert('x')</script>"
    sent = open_client.post(
        "/events",
        json={"type": "dash.escape", "source": "/t", "subject": hostile, "data": {"note": hostile}},
    )
    assert sent.status_code == 202, sent.text
    for path in ("/", "/ui/events/1", "/?pattern=" + hostile.replace("<", "%3C")):
        page = open_client.get(path)
        assert "<script>alert" not in page.text, path
    event = open_client.get("/ui/events/1").text
    assert "&lt;script&gt;alert(" in event, event
    csp = open_client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp


def test_ids_and_patterns_are_checked(open_client: TestClient) -> None:
    assert open_client.get("/ui/events/999").status_code == 404
    assert open_client.get("/ui/events/abc").status_code == 404  # not a position: no route
    bad = open_client.get("/ui/endpoints/" + "a" * 300)
    assert bad.status_code == 400 and "endpoint id" in bad.text, bad.text
    assert open_client.get("/ui/endpoints/nosuch").status_code == 404
    wrong = open_client.get("/", params={"pattern": "order.**x"})
    assert wrong.status_code == 400 and "pattern" in wrong.text, wrong.text
    token = _token(open_client.get("/ui/endpoints/shop").text)
    unknown = open_client.post("/ui/endpoints/shop/explode", data={"csrf": token}, headers=ORIGIN)
    assert unknown.status_code == 404, unknown.text
    huge = open_client.post(
        "/ui/endpoints/shop/disable", data={"csrf": token, "pad": "x" * 20_000}, headers=ORIGIN
    )
    assert huge.status_code == 413, huge.text
    assert open_client.get("/ui/static/../../app.py").status_code == 404


def test_dashboard_pages_are_not_api_operations(open_client: TestClient) -> None:
    paths = open_client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")], sorted(paths)


def test_charts_are_rates_between_samples_in_the_box() -> None:
    from tidings.server.dashboard.charts import HEIGHT, WIDTH, Sample, charts  # noqa: PLC0415

    samples = [
        Sample(at=1000.0 + 10 * i, head=30 * i, attempts=20 * i, failed=5 * i, delivered=15 * i,
               dead=0)
        for i in range(7)
    ]  # fmt: skip
    stored, deliveries, share = charts(samples)
    assert stored.lines[0].last == 3.0 and stored.top == 5.0, stored
    assert deliveries.lines[0].last == 1.5 and deliveries.lines[1].last == 0.5
    assert share.lines[0].last == 25.0 and share.top == 100.0
    assert stored.span == 60.0, "under an hour of samples: the axis covers what there is"
    for chart in (stored, deliveries, share):
        for line in chart.lines:
            for point in line.points.split():
                x, y = map(float, point.split(","))
                assert 0 <= x <= WIDTH and 0 <= y <= HEIGHT, (chart.title, point)
    assert charts([])[0].lines[0].points == ""


def test_the_readme_config_serves_the_dashboard(tmp_path: Path) -> None:
    """`make run` (examples/serve.yaml) answers the README's http://127.0.0.1:8000/."""
    import msgspec  # noqa: PLC0415

    root = Path(__file__).resolve().parents[2]
    settings = load(root / "examples" / "serve.yaml", env={})
    store = msgspec.structs.replace(settings.store, url=f"sqlite:///{tmp_path / 'readme.db'}")
    settings = msgspec.structs.replace(settings, store=store)
    with TestClient(create_app(Service(settings)), follow_redirects=False) as client:
        page = client.get("/")
        assert page.status_code == 200, page.text
        assert "Live events" in page.text
        assert "demo" in client.get("/ui/endpoints").text


def test_a_delivery_page_shows_its_attempts(open_client: TestClient) -> None:
    import time  # noqa: PLC0415

    sent = open_client.post("/events", json={"type": "dash.attempted", "source": "/t"})
    assert sent.status_code == 202, sent.text
    event_id = sent.json()["ids"][0]
    deadline = time.monotonic() + 30
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        rows = open_client.get("/deliveries", params={"event_id": event_id}).json()["deliveries"]
        if rows and rows[0]["state"] == "dead":
            break
        time.sleep(0.05)
    assert rows and rows[0]["state"] == "dead", rows
    page = open_client.get(f"/ui/deliveries/{rows[0]['id']}")
    assert page.status_code == 200, page.text
    assert "cannot connect" in page.text and "not attempted yet" not in page.text, page.text
    assert open_client.get("/ui/deliveries/nope").status_code == 404
    assert open_client.get("/ui/deliveries/" + "x" * 201).status_code == 400


def test_the_live_page_shows_the_triggers_processor(tmp_path: Path) -> None:
    config = {
        "store": {"url": f"sqlite:///{tmp_path / 'trig.db'}"},
        "server": {"sender_process": False},
        "triggers": [{"id": "dash-t", "pattern": "dash.*", "actions": [{"type": "log"}]}],
    }
    path = tmp_path / "tidings.yaml"
    path.write_text(yaml.safe_dump(config))
    with TestClient(create_app(Service(load(path, env={}), path))) as client:
        page = client.get("/")
        assert page.status_code == 200, page.text
        assert 'id="triggers-status"><span class="good">processing' in page.text, page.text
