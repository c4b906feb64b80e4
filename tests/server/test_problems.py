"""Every error of the HTTP API is RFC 9457 problem details: tidings' own refusals, Starlette's
404 and 405, a wrong API key, and an unexpected exception (a 500 with no traceback)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.server.conftest import Running, free_port
from tidings.server.problems import PROBLEM_TYPE, exception_handlers

Start = Callable[..., Awaitable[Running]]


def assert_problem(status: int, body: Any, expected: int) -> None:
    assert status == expected, body
    assert isinstance(body, dict), body
    assert body["status"] == expected, body
    assert isinstance(body["type"], str) and body["type"], body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert "error" not in body, "the old {error} shape is gone"


async def raw(app: Running, method: str, path: str, **kw: Any) -> tuple[int, str, Any, Any]:
    async with app.session.request(method, app.url + path, **kw) as resp:
        return resp.status, resp.content_type, resp.headers, await resp.json(content_type=None)


async def test_a_bad_field_names_its_path_in_field_and_errors(serve: Start) -> None:
    app = await serve()
    status, media, _, body = await raw(app, "POST", "/events", json=[{"type": "a.b"}, {}])
    assert media == PROBLEM_TYPE
    assert_problem(status, body, 400)
    assert body["field"] == "[1].type", body
    assert body["errors"] == [{"field": "[1].type", "detail": body["detail"]}], body
    assert body["title"] == "Bad Request" and body["type"] == "about:blank", body


async def test_unknown_route_and_method_are_problems(serve: Start) -> None:
    app = await serve()
    status, media, _, body = await raw(app, "GET", "/no/such/route")
    assert media == PROBLEM_TYPE
    assert_problem(status, body, 404)
    assert "/no/such/route" in body["detail"], body
    status, media, headers, body = await raw(app, "PUT", "/events")
    assert media == PROBLEM_TYPE
    assert_problem(status, body, 405)
    assert "GET" in headers["Allow"] and "POST" in headers["Allow"], headers
    assert "PUT" in body["detail"] and "POST" in body["detail"], body


async def test_a_missing_key_is_a_401_problem_with_a_challenge(serve: Start) -> None:
    app = await serve({"server": {"api_key": "k-123"}})
    status, media, headers, body = await raw(app, "GET", "/endpoints")
    assert media == PROBLEM_TYPE
    assert_problem(status, body, 401)
    assert headers["WWW-Authenticate"].startswith("Bearer"), headers
    assert body["field"] == "Authorization" and "Bearer" in body["detail"], body
    assert "k-123" not in str(body)


async def test_a_duplicate_event_has_a_type_of_its_own(serve: Start) -> None:
    app = await serve()
    event = {"id": "dup-1", "type": "a.b", "source": "t"}
    status, _, _, _ = await raw(app, "POST", "/events", json=event)
    assert status == 202
    status, _, _, body = await raw(app, "POST", "/events", json=event)
    assert_problem(status, body, 409)
    assert body["type"] == "urn:tidings:problem:duplicate-event" and body["field"] == "id", body


async def test_an_unexpected_exception_is_a_500_problem_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("secret internals at /srv/app.py line 42")

    app = Starlette(routes=[Route("/x", broken)], exception_handlers=exception_handlers())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical", lifespan="off"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.ensure_future(server.serve())
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        with caplog.at_level(logging.ERROR, "tidings.server"):
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/x") as resp,
            ):
                status, media, text = resp.status, resp.content_type, await resp.text()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
    assert media == PROBLEM_TYPE, text
    assert_problem(status, json.loads(text), 500)
    assert "secret internals" not in text and "Traceback" not in text, text
    assert any("secret internals" in str(r.exc_info) for r in caplog.records), "logged in full"
