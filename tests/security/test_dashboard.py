"""The dashboard as an attacker sees it: the login cookie opens no write route of the API, login
and logout need the CSRF token and the page's origin, ``next=`` cannot send a user elsewhere,
every answer forbids framing, and the key never shows in a log line or a URL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.server.test_dashboard import ADMIN, ORIGIN, READER, _client, _login, _token

WRITES = [
    ("POST", "/events", {"type": "sec.x", "source": "/t", "data": {}}),
    ("POST", "/triggers", {"id": "t", "pattern": "a.*", "actions": [{"type": "log"}]}),
    ("POST", "/endpoints", {"id": "evil", "url": "https://example.com/h", "events": ["**"]}),
    ("POST", "/endpoints/shop/disable", None),
    ("POST", "/endpoints/shop/rotate-secret", None),
    ("DELETE", "/endpoints/shop", None),
    ("POST", "/api-keys", {"name": "mine", "scopes": ["admin"]}),
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path, keyed=True) as c:
        yield c


def test_the_login_cookie_opens_no_write_route(client: TestClient) -> None:
    _login(client, ADMIN)
    assert client.cookies.get("tidings_key") == ADMIN
    for method, path, body in WRITES:
        answer = client.request(method, path, json=body, headers=ORIGIN)
        assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
    # the endpoint is untouched, and reads with the cookie still work
    shop = client.get("/endpoints/shop")
    assert shop.status_code == 200 and shop.json()["enabled"] is True, shop.text


def test_login_goes_home_whatever_next_says(client: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example", "/\\evil.example"):
        page = client.get("/ui/login", params={"next": target})
        token = _token(page.text)
        answer = client.post(
            "/ui/login",
            params={"next": target},
            data={"key": READER, "csrf": token, "next": target},
            headers=ORIGIN,
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/", answer.headers


def test_login_and_logout_need_the_token_and_the_origin(client: TestClient) -> None:
    token = _token(client.get("/ui/login").text)
    for data, headers in [
        ({"key": ADMIN}, ORIGIN),  # no token: a page elsewhere logging the user in as it likes
        ({"key": ADMIN, "csrf": token}, {"Origin": "http://evil.example"}),
        ({"key": ADMIN, "csrf": token}, {"Referer": "http://testserver.evil.example/"}),
        ({"key": ADMIN, "csrf": "A" * 43}, ORIGIN),
    ]:
        answer = client.post("/ui/login", data=data, headers=headers)
        assert answer.status_code == 403, (data, headers, answer.text[:300])
        assert "tidings_key" not in answer.headers.get("set-cookie", ""), answer.headers
    _login(client, READER)
    out = client.post("/ui/logout", data={"csrf": token}, headers={"Origin": "http://evil.example"})
    assert out.status_code == 403 and "tidings_key" not in out.headers.get("set-cookie", "")
    assert client.get("/").status_code == 200  # still logged in


def test_every_answer_forbids_framing_and_caching(client: TestClient) -> None:
    answers = {
        "login": client.get("/ui/login"),
        "redirect": client.get("/"),
        "wrong login": client.post("/ui/login", data={"key": "x"}, headers=ORIGIN),
    }
    _login(client, READER)
    answers["home"] = client.get("/")
    answers["404"] = client.get("/ui/events/424242")
    answers["400"] = client.get("/ui/endpoints/" + "a" * 300)
    answers["403 button"] = client.post(
        "/ui/endpoints/shop/disable", data={"csrf": _token(answers["home"].text)}, headers=ORIGIN
    )
    for name, answer in answers.items():
        h = answer.headers
        assert h.get("x-frame-options") == "DENY", (name, answer.status_code, dict(h))
        assert "frame-ancestors 'none'" in h.get("content-security-policy", ""), name
        assert h.get("cache-control") == "no-store", name


def test_the_key_never_shows_in_logs_or_pages(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = _token(client.get("/ui/login").text)
    wrong = "wrong-" + ADMIN
    refused = client.post("/ui/login", data={"key": wrong, "csrf": token}, headers=ORIGIN)
    assert refused.status_code == 401 and wrong not in refused.text
    _login(client, ADMIN)
    home = client.get("/")
    assert ADMIN not in home.text and ADMIN not in str(home.url)
    client.get("/endpoints", headers={"Authorization": f"Bearer {wrong}"})
    for secret in (ADMIN, wrong):
        assert secret not in caplog.text, caplog.text[-2000:]
