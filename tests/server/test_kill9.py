"""`kill -9` of the whole service mid-delivery loses nothing: every event arrives after restart.

The service runs as a real `tidings serve` process (SQLite store in a temp dir). Thousands of
events are accepted (202 means committed with their deliveries), the process is SIGKILLed while
the receiver is still getting them, then started again on the same database. The receiver must
end up with every event; repeats may only carry a message id it has already seen
(at-least-once, deduplicable by `webhook-id`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.server.conftest import Received, Receiver, free_port, wait_healthy

EVENTS = 3000


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidings",
            "--config",
            str(config),
            "serve",
            "--log-level",
            "warning",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.timeout(180)
async def test_sigkill_mid_delivery_then_restart_delivers_every_event(tmp_path: Path) -> None:
    received: list[Received] = []
    slow = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        received.append(Received(dict(request.headers), await request.read(), time.time()))
        if not slow.is_set():
            await asyncio.sleep(0.002)  # keep delivery going while the kill happens
        return web.Response(text="ok")

    port = free_port()
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rec = Receiver(url=f"http://127.0.0.1:{port}/hook", requests=received)

    serve_port = free_port()
    config = tmp_path / "tidings.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": f"sqlite:///{tmp_path / 'tidings.db'}"},
                "server": {"port": serve_port, "lease": "6s"},
                "events": {
                    "enabled": True,
                    "retry_delay": "0.2s",
                    "timeout": "2s",
                    "queue_size": EVENTS * 2,
                    "endpoints": {"order.*": [rec.url]},
                },
            }
        )
    )
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{serve_port}"
    proc = _start(config, log)
    try:
        await wait_healthy(url, proc, log)
        sent: list[str] = []
        async with aiohttp.ClientSession() as session:
            for start in range(0, EVENTS, 100):
                batch = [
                    {"type": "order.placed", "source": "kill9", "data": {"n": n}}
                    for n in range(start, start + 100)
                ]
                async with session.post(url + "/events", json=batch) as resp:
                    assert resp.status == 202, await resp.text()
                    sent.extend((await resp.json())["ids"])
        # Kill while deliveries are in flight: some arrived, most not yet.
        deadline = time.monotonic() + 30
        while len(received) < EVENTS // 10:
            assert time.monotonic() < deadline, "deliveries did not start"
            await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before = len(received)
        assert before < EVENTS, "everything arrived before the kill: the test proves nothing"
        slow.set()
        proc = _start(config, log)
        await wait_healthy(url, proc, log)
        delivered_ids = lambda: {r.headers.get("tidings-event-id") for r in received}  # noqa: E731
        deadline = time.monotonic() + 90
        while len(delivered_ids() & set(sent)) < EVENTS:
            assert time.monotonic() < deadline, (
                f"{EVENTS - len(delivered_ids() & set(sent))} events never arrived "
                f"({before} before the kill)"
            )
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert delivered_ids() == set(sent)
        # A repeat is only ever the same message (same webhook-id as an earlier request).
        per_event: dict[str, set[str]] = {}
        for r in received:
            per_event.setdefault(r.headers["tidings-event-id"], set()).add(r.headers["webhook-id"])
        assert all(len(ids) == 1 for ids in per_event.values()), "a redelivery got a new id"
        repeats = sum(c - 1 for c in Counter(rec.message_ids()).values())
        print(f"kill -9 test: {before} arrived before the kill, {repeats} repeats after restart")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        await runner.cleanup()
