"""Real HTTP on loopback: webhook receivers with chosen behaviours, and `tidings serve` in-process.

A receiver is an aiohttp server on a free port that records every request (headers, body,
arrival time) and answers by a behaviour function; the service runs the real Starlette app under
a real uvicorn server in the test's event loop, so requests go through sockets both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
import yaml
from aiohttp import web

from tidings.config import load
from tidings.server.app import create_app
from tidings.server.service import Service

Behaviour = Callable[["Received", int], Awaitable[web.StreamResponse]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)

    def message_ids(self) -> list[str]:
        return [r.headers.get("webhook-id", "") for r in self.requests]

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"receiver got {len(self.requests)} requests, expected {count}"
                )
            await asyncio.sleep(0.01)


async def ok(req: Received, n: int) -> web.StreamResponse:
    return web.Response(status=200, text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    """``await receiver(behaviour)`` starts one; all stop at teardown."""
    runners: list[web.AppRunner] = []

    async def start(behaviour: Behaviour = ok, path: str = "/hook") -> Receiver:
        port = free_port()
        rec = Receiver(url=f"http://127.0.0.1:{port}{path}")

        async def handle(request: web.Request) -> web.StreamResponse:
            got = Received(dict(request.headers), await request.read(), time.time())
            rec.requests.append(got)
            return await behaviour(got, len(rec.requests))

        app = web.Application()
        app.router.add_post(path, handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return rec

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class Running:
    url: str
    service: Service
    session: aiohttp.ClientSession
    config: Path

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        async with self.session.post(self.url + path, json=body, **kw) as resp:
            return resp.status, await _payload(resp)

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.url + path, **kw) as resp:
            return resp.status, await _payload(resp)

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, json=body, **kw) as resp:
            return resp.status, await _payload(resp)


async def _payload(resp: aiohttp.ClientResponse) -> Any:
    if resp.content_type in ("application/json", "application/problem+json"):
        return await resp.json(content_type=None)
    return await resp.text()


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """``await serve(config_dict)`` runs tidings serve (SQLite in tmp_path unless set)."""
    stops: list[Callable[[], Awaitable[None]]] = []

    async def start(config: dict[str, Any] | None = None, **env: str) -> Running:
        config = dict(config or {})
        config.setdefault("store", {"url": f"sqlite:///{tmp_path / 'tidings.db'}"})
        server = config.setdefault("server", {})
        server.setdefault("port", free_port())
        path = tmp_path / "tidings.yaml"
        path.write_text(yaml.safe_dump(config))
        settings = load(path, env={**env})
        service = Service(settings, path)
        app = create_app(service)
        port = settings.server.port
        uv = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        uv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        task = asyncio.ensure_future(uv.serve())
        deadline = time.monotonic() + 10
        while not uv.started:
            if task.done() or time.monotonic() > deadline:
                raise RuntimeError(f"tidings serve did not start: {task.exception()}")
            await asyncio.sleep(0.01)
        session = aiohttp.ClientSession()

        async def stop() -> None:
            await session.close()
            uv.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 20)

        stops.append(stop)
        return Running(f"http://127.0.0.1:{port}", service, session, path)

    yield start
    for stop in reversed(stops):
        await stop()


async def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"tidings serve exited: {log.read_text()[-2000:]}")
            try:
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"tidings serve not healthy in {timeout}s: {log.read_text()[-2000:]}")
