"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real
`tidings serve` process with an API key and a webhook receiver whose answer the test switches.

Each page is saved as a screenshot under tmp/artefacts/dashboard/; with TIDINGS_SCREENSHOTS set
to a folder (``TIDINGS_SCREENSHOTS=docs/images``) they are copied there too, which is how the
pictures in docs/dashboard.md are made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Browser, Page, sync_playwright

from tests.server.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / "tmp" / "artefacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
ADMIN = "browser-admin-key-0123456789"
WAIT = 30.0  # seconds for anything that depends on the machine's load


@dataclass
class Receiver:
    """A webhook receiver answering ``status``; records (webhook-id, status answered)."""

    url: str
    status: int = 200
    got: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    port = free_port()
    rec = Receiver(f"http://127.0.0.1:{port}/hook")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            status = rec.status
            rec.got.append((self.headers.get("webhook-id", ""), status))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@dataclass
class Server:
    url: str
    log: Path

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {ADMIN}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as resp:
                raw = resp.read()
                kind = resp.headers.get("content-type", "")
                return resp.status, json.loads(raw) if "json" in kind else raw.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def publish(self, type: str, **fields: Any) -> str:
        status, body = self.call("POST", "/events", {"type": type, "source": "/shop", **fields})
        assert status == 202, body
        event_id: str = body["ids"][0]
        return event_id

    def metrics(self) -> str:
        status, body = self.call("GET", "/metrics")
        assert status == 200, body
        return str(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    config = {
        "store": {"url": f"sqlite:///{folder / 'tidings.db'}"},
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "api_keys": [{"name": "ops", "key": ADMIN, "scopes": ["admin"]}],
        },
        "events": {
            "enabled": True,
            "max_retries": 1,
            "retry_delay": "200ms",
            "webhooks": {"shop": {"url": receiver.url, "events": ["shop.**"]}},
        },
    }
    path = folder / "tidings.yaml"
    path.write_text(yaml.safe_dump(config))
    log = folder / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TIDINGS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "--config", str(path), "serve"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        cwd=folder,
    )
    running = Server(f"http://127.0.0.1:{port}", log)
    try:
        _until(lambda: _healthy(running, proc), "tidings serve to answer /health", log)
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _healthy(server: Server, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"tidings serve exited: {server.log.read_text()[-2000:]}")
    try:
        return server.call("GET", "/health")[0] == 200
    except OSError:
        return False


def _until(check: Callable[[], Any], what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    tail = "" if log is None else log.read_text()[-2000:]
    raise AssertionError(f"waited {WAIT}s for {what}; {tail}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


def _new_page(browser: Browser) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT * 1000)
    return context.new_page()


def _login(page: Page, server: Server, key: str) -> int:
    """Fill the login form; the status the server answered the form with."""
    page.goto(server.url + "/ui/login")
    page.fill("input[name=key]", key)
    with page.expect_response(
        lambda r: r.url.endswith("/ui/login") and r.request.method == "POST"
    ) as answer:
        page.click("button[type=submit]")
    page.wait_for_load_state()
    return answer.value.status


@pytest.fixture(scope="module")
def page(browser: Browser, server: Server) -> Iterator[Page]:
    """A browser logged in with the admin key."""
    tab = _new_page(browser)
    assert _login(tab, server, ADMIN) == 303
    yield tab
    tab.context.close()


def screenshot(page: Page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTEFACTS / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    copy_to = os.environ.get("TIDINGS_SCREENSHOTS")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(copy_to) / f"dashboard-{name}.png")


def _delivery_of(server: Server, event_id: str, state: str) -> dict[str, Any] | None:
    status, body = server.call("GET", f"/deliveries?event_id={event_id}")
    assert status == 200, body
    rows = [d for d in body["deliveries"] if d["state"] == state]
    return rows[0] if rows else None


def test_the_login_refuses_a_wrong_key(browser: Browser, server: Server) -> None:
    tab = _new_page(browser)
    try:
        tab.goto(server.url + "/")
        assert tab.url.endswith("/ui/login"), tab.url
        assert _login(tab, server, "not-" + ADMIN) == 401
        assert "not valid" in tab.inner_text("#login-error")
        screenshot(tab, "login")
        tab.goto(server.url + "/ui/endpoints")
        assert tab.url.endswith("/ui/login"), "still not logged in"
    finally:
        tab.context.close()


def test_a_published_event_appears_in_the_live_feed_within_a_second(
    page: Page, server: Server
) -> None:
    for n in range(3):  # something to look at in the screenshot
        server.publish("shop.order.created", subject=f"order-{n}", data={"n": n})
    page.goto(server.url + "/")
    page.wait_for_selector("#feed-state.live")
    event_id = server.publish("shop.order.paid", subject="order-7", data={"amount": 12.5})
    sent = time.monotonic()
    row = page.wait_for_selector(f"#events tbody tr:has-text('{event_id}')")
    seen = time.monotonic() - sent
    assert row is not None
    print(f"published -> shown in the feed: {seen * 1000:.0f} ms")
    assert seen < 1.0, f"the event showed in the feed after {seen:.3f}s"
    assert "shop.order.paid" in row.inner_text()
    # the pattern filter: only matching events, live too
    page.fill("input[name=pattern]", "shop.order.created")
    page.click(".filter button")
    page.wait_for_selector("#feed-state.live")
    types = page.locator("#events tbody td.type").all_inner_texts()
    assert types and set(types) == {"shop.order.created"}, types
    server.publish("shop.order.paid", subject="filtered-out")
    wanted = server.publish("shop.order.created", subject="order-9")
    page.wait_for_selector(f"#events tbody tr:has-text('{wanted}')")
    assert "filtered-out" not in page.inner_text("#events")


def test_a_dead_delivery_is_retried_by_its_button_and_arrives(
    page: Page, server: Server, receiver: Receiver
) -> None:
    receiver.status = 500
    event_id = server.publish(
        "shop.refund.requested", subject="order-3", data={"reason": "<b>broken</b>"}
    )
    dead = _until(lambda: _delivery_of(server, event_id, "dead"), "the delivery to die")
    page.goto(f"{server.url}/ui/events/{dead['position']}")
    assert page.inner_text(f"#deliveries tr[data-delivery='{dead['id']}'] td.state") == "dead"
    assert "<b>broken</b>" in page.inner_text("#event-data"), "data shown as text"
    screenshot(page, "event")
    page.click(f"#deliveries tr[data-delivery='{dead['id']}'] td.mono a")
    assert page.locator("#attempts tbody tr").count() == 2, page.inner_text("#attempts")
    assert "HTTP 500" in page.inner_text("#attempts")
    screenshot(page, "delivery")
    receiver.status = 200
    page.goto(server.url + "/ui/endpoints/shop")
    page.click(f"#dlq tr[data-delivery='{dead['id']}'] button.retry")
    assert "queued again" in page.inner_text("#done")
    _until(lambda: (dead["id"], 200) in receiver.got, "the retried delivery to arrive")
    assert _until(lambda: _delivery_of(server, event_id, "delivered"), "delivered state")
    page.goto(server.url + "/ui/endpoints/shop")
    row = page.locator(f"#latest tr[data-delivery='{dead['id']}'] td.state")
    assert row.inner_text() == "delivered", page.inner_text("#latest")
    print("receiver got", receiver.got)


def _metric(text: str, name: str, **labels: str) -> int:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.MULTILINE)
    return 0 if found is None else int(float(found.group(1)))


def test_the_endpoint_page_figures_match_metrics(page: Page, server: Server) -> None:
    names = {
        "attempts": ("tidings_webhook_attempts_total", {}),
        "delivered": ("tidings_webhook_delivered_total", {}),
        "failed": ("tidings_webhook_failed_total", {}),
        "retries": ("tidings_webhook_retries_total", {}),
        "dead": ("tidings_webhook_dead_total", {}),
        "queue-pending": ("tidings_webhook_endpoint_queue_depth", {"state": "pending"}),
        "queue-delivering": ("tidings_webhook_endpoint_queue_depth", {"state": "delivering"}),
        "queue-dead": ("tidings_webhook_endpoint_queue_depth", {"state": "dead"}),
    }

    def exported() -> dict[str, int]:
        text = server.metrics()
        return {
            key: _metric(text, name, endpoint="shop", **labels)
            for key, (name, labels) in names.items()
        }

    def figures() -> tuple[dict[str, int], dict[str, int]] | None:
        before = exported()
        page.goto(server.url + "/ui/endpoints/shop")
        shown = {key: int(page.inner_text(f"[data-metric='{key}']")) for key in names}
        after = exported()
        # something moved meanwhile: look again
        return None if before != after else (shown, after)

    shown, scraped = _until(figures, "two equal scrapes around the page")
    print("page", shown, "metrics", scraped)
    assert shown == scraped
    assert shown["attempts"] >= 3 and shown["failed"] >= 2 and shown["delivered"] >= 1, shown
    screenshot(page, "endpoint")
    page.goto(server.url + "/ui/endpoints")
    assert page.inner_text("tr[data-endpoint='shop'] td.breaker-closed") == "closed"
    screenshot(page, "endpoints")


def test_a_post_without_the_csrf_token_is_refused(page: Page, server: Server) -> None:
    refused = page.request.post(
        server.url + "/ui/endpoints/shop/disable",
        form={"note": "no token"},
        headers={"Origin": server.url},
    )
    assert refused.status == 403, refused.text()
    assert "CSRF" in refused.text()
    status, body = server.call("GET", "/endpoints/shop")
    assert status == 200 and body["enabled"] is True, body
    page.goto(server.url + "/ui/endpoints/shop")
    page.click("#disable")
    assert page.inner_text("#ep-state") == "disabled"
    page.click("#enable")
    assert page.inner_text("#ep-state") == "enabled"


def test_the_live_page_after_some_traffic(page: Page, server: Server) -> None:
    """The live page's screenshot, once the charts have a few samples (one every 5 s)."""
    for second in range(8):
        for n in range(second * 5):
            server.publish(f"shop.{('order.created', 'order.paid', 'cart.updated')[n % 3]}",
                           subject=f"order-{second}-{n}", data={"n": n})  # fmt: skip
        time.sleep(1)
    page.goto(server.url + "/")
    page.wait_for_selector("#feed-state.live")
    points = page.locator("#charts polyline").first.get_attribute("points") or ""
    assert len(points.split()) >= 4, points
    screenshot(page, "live")
