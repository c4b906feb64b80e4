"""`python -m tidings serve` as a real process: SIGHUP reload, SIGTERM shutdown, the README flow.

These exercise what the in-process ``serve`` fixture cannot: signal handlers installed by the
real uvicorn main loop, the exit status, and the shipped example files run as documented.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.server.conftest import Receiver, free_port, wait_healthy
from tidings.store import open_store
from tidings.webhooks.queue import DeliveryQueue

ROOT = Path(__file__).resolve().parents[2]
Proc = subprocess.Popen[bytes]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TIDINGS_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture
def processes() -> Iterator[list[Proc]]:
    """Every process a test starts is killed at teardown, whatever the test did."""
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start_serve(
    procs: list[Proc], config: Path, log: Path, env: dict[str, str] | None = None
) -> Proc:
    cmd = [sys.executable, "-m", "tidings", "--config", str(config), "serve", "--log-level", "info"]
    proc = subprocess.Popen(
        cmd,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=_clean_env(**(env or {})),
        cwd=log.parent,
    )
    procs.append(proc)
    return proc


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def post_json(url: str, body: Any) -> Any:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        assert resp.status == 202, await resp.text()
        return await resp.json()


async def wait_exit(proc: Proc, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"process {proc.pid} still running after {timeout}s")
        await asyncio.sleep(0.05)
    return proc.returncode


def write_config(path: Path, port: int, endpoints: dict[str, Any]) -> None:
    config = {
        "store": {"url": f"sqlite:///{path.parent / 'tidings.db'}"},
        "server": {"port": port},
        "events": {"enabled": True, "webhooks": endpoints},
    }
    path.write_text(yaml.safe_dump(config))


async def test_sighup_reloads_the_config(
    tmp_path: Path, processes: list[Proc], receiver: Any
) -> None:
    first: Receiver = await receiver()
    second: Receiver = await receiver()
    port = free_port()
    config, log = tmp_path / "tidings.yaml", tmp_path / "serve.log"
    write_config(config, port, {"first": {"url": first.url, "events": ["**"]}})
    proc = start_serve(processes, config, log)
    url = f"http://127.0.0.1:{port}"
    await wait_healthy(url, proc, log)
    assert [ep["id"] for ep in (await get_json(url + "/endpoints"))["endpoints"]] == ["first"]

    before = config.stat()
    write_config(
        config,
        port,
        {
            "first": {"url": first.url, "events": ["**"]},
            "second": {"url": second.url, "events": ["order.*"]},
        },
    )
    # Keep the old mtime, so the file watcher cannot be what reloads it: only SIGHUP can.
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        ids = sorted(ep["id"] for ep in (await get_json(url + "/endpoints"))["endpoints"])
        if ids == ["first", "second"]:
            break
        assert time.monotonic() < deadline, f"SIGHUP did not reload: {ids}; {log.read_text()}"
        await asyncio.sleep(0.05)
    assert proc.poll() is None, "SIGHUP must not stop the server"
    await post_json(url + "/events", {"type": "order.placed", "data": {"n": 1}})
    await first.wait_for(1)
    await second.wait_for(1)
    assert "config reloaded" in log.read_text()


def clean_exit(proc: Proc, log: Path) -> None:
    """A graceful uvicorn shutdown ran to its end (whatever the exit status, see below)."""
    text = log.read_text()
    assert proc.returncode in (0, -signal.SIGTERM), text[-2000:]
    assert "Application shutdown complete" in text and "Traceback" not in text, text[-2000:]


async def test_sigterm_shuts_down_cleanly_and_claimed_but_unsent_deliveries_stay_pending(
    tmp_path: Path, processes: list[Proc], receiver: Any
) -> None:
    """A rate limit of one request per 20 s keeps claimed deliveries waiting for a token; a
    SIGTERM then must hand them back as pending, not lose or half-finish them."""
    rec: Receiver = await receiver()
    port = free_port()
    config, log = tmp_path / "tidings.yaml", tmp_path / "serve.log"
    paced = {"url": rec.url, "events": ["**"], "rate_limit": 0.05, "burst": 1}
    write_config(config, port, {"paced": paced})
    proc = start_serve(processes, config, log)
    url = f"http://127.0.0.1:{port}"
    await wait_healthy(url, proc, log)
    total = 5
    await post_json(url + "/events", [{"type": "a.b", "data": {"n": i}} for i in range(total)])
    await rec.wait_for(1)  # the burst token; the other four are claimed, waiting for tokens
    health = await get_json(url + "/health")
    assert health["workers"]["claimed"] == total - 1
    assert health["workers"]["in_flight"] == 0, "waiting for a token is not on the wire"
    proc.send_signal(signal.SIGTERM)
    await wait_exit(proc, 30)
    clean_exit(proc, log)
    assert len(rec.requests) == 1, "nothing is sent after SIGTERM while waiting for tokens"
    assert "handed back unsent (still pending)" in log.read_text()

    store = open_store(f"sqlite:///{tmp_path / 'tidings.db'}")
    queue = DeliveryQueue(store)  # type: ignore[arg-type]
    try:
        states = sorted(d.state for d in queue.deliveries())
        pending = queue.deliveries(state="pending")
    finally:
        queue.close()
        store.close()
    assert states == ["delivered"] + ["pending"] * (total - 1)
    assert all(d.attempts == 0 for d in pending), "unsent deliveries keep their retry budget"


def readme_receiver_command(port: int) -> list[str]:
    """The receiver command line exactly as README.md writes it, with this interpreter for
    ``.venv/bin/python``; only ``--port`` is added, so parallel test runs do not share 9000."""
    readme = (ROOT / "README.md").read_text()
    lines = [ln for ln in readme.splitlines() if "examples/webhook_receiver.py" in ln]
    command = [ln for ln in lines if ln.startswith(".venv/bin/python ")]
    assert len(command) == 1, f"README's receiver command line not found in {lines}"
    argv = shlex.split(command[0], comments=True)
    assert argv[0] == ".venv/bin/python", argv
    return [sys.executable, *argv[1:], "--port", str(port)]


async def wait_for_line(proc: Proc, log: Path, text: str, timeout: float) -> str:
    """The process's output once ``text`` appears in it; fails if the process exits first."""
    deadline = time.monotonic() + timeout
    while text not in (out := log.read_text()):
        assert proc.poll() is None, f"exited {proc.returncode} before {text!r}: {out}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout}s: {out}"
        await asyncio.sleep(0.05)
    return out


async def test_readme_flow_with_the_example_config_and_receiver(
    tmp_path: Path, processes: list[Proc]
) -> None:
    server_port, receiver_port = free_port(), free_port()
    receiver_log = tmp_path / "receiver.log"
    rec = subprocess.Popen(
        readme_receiver_command(receiver_port),
        stdout=receiver_log.open("ab"),
        stderr=subprocess.STDOUT,
        env=_clean_env(),
        cwd=ROOT,
    )
    processes.append(rec)
    log = tmp_path / "serve.log"
    env = {
        "TIDINGS_SERVER__PORT": str(server_port),
        "TIDINGS_STORE__URL": f"sqlite:///{tmp_path / 'tidings.db'}",
        "TIDINGS_EVENTS__WEBHOOKS__DEMO__URL": f"http://127.0.0.1:{receiver_port}/webhook",
    }
    serve = start_serve(processes, ROOT / "examples" / "serve.yaml", log, env)
    url = f"http://127.0.0.1:{server_port}"
    await wait_healthy(url, serve, log)
    await wait_for_line(rec, receiver_log, "receiving on", 15)

    data = {"order_id": "o-1", "total": 42}
    await post_json(url + "/events", {"type": "order.placed", "data": data})
    verified = f"verified order.placed: {json.dumps(data)}"
    out = await wait_for_line(rec, receiver_log, verified, 15)
    assert "rejected" not in out
    assert "never awaited" not in out
    assert rec.poll() is None, "the receiver keeps running until it is stopped"
    rec.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
    assert await wait_exit(rec, 15) == 0, receiver_log.read_text()
    assert "Traceback" not in receiver_log.read_text()
    serve.send_signal(signal.SIGTERM)
    await wait_exit(serve, 20)
    clean_exit(serve, log)


async def test_sigterm_exit_status_is_0(tmp_path: Path, processes: list[Proc]) -> None:
    port = free_port()
    config, log = tmp_path / "tidings.yaml", tmp_path / "serve.log"
    write_config(config, port, {})
    proc = start_serve(processes, config, log)
    await wait_healthy(f"http://127.0.0.1:{port}", proc, log)
    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc, 20) == 0


def _alive(pid: int) -> bool:
    """Running (not exited, and not a zombie waiting for whoever adopted it to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("answered", [True, False], ids=["answers-arrive", "still-held"])
async def test_the_sender_process_exits_quietly_when_serve_is_killed(
    tmp_path: Path, processes: list[Proc], receiver: Any, answered: bool
) -> None:
    """`kill -9` of `tidings serve` while its sender child has requests in flight: the child
    notices its parent is gone and exits promptly without a traceback, whether the answers to
    its requests then arrive (nobody to pass them to) or not (it does not wait for them)."""
    hold = asyncio.Event()

    async def held(req: Any, n: int) -> Any:
        await hold.wait()
        return web.Response(status=200)

    rec: Receiver = await receiver(held)
    port = free_port()
    config, log = tmp_path / "tidings.yaml", tmp_path / "serve.log"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": f"sqlite:///{tmp_path / 'tidings.db'}"},
                "server": {"port": port, "sender_process": True},
                "events": {"enabled": True, "webhooks": {"h": {"url": rec.url, "events": ["**"]}}},
            }
        )
    )
    proc = start_serve(processes, config, log)
    url = f"http://127.0.0.1:{port}"
    child = 0
    try:
        await wait_healthy(url, proc, log)
        await post_json(url + "/events", [{"type": "a.b", "data": {"n": i}} for i in range(3)])
        await rec.wait_for(3)  # three requests on the wire, held by the receiver
        found = re.search(r"webhook sender process (\d+) started", log.read_text())
        assert found is not None, log.read_text()[-2000:]
        child = int(found.group(1))
        assert _alive(child)
        before = len(log.read_text())
        proc.kill()
        await wait_exit(proc, 10)
        if answered:
            hold.set()  # the child's requests get their answers, with nobody to pass them to
        deadline = time.monotonic() + 5  # well below the 10 s request timeout
        while _alive(child):
            assert time.monotonic() < deadline, "the sender process outlived its parent"
            await asyncio.sleep(0.05)
        after = log.read_text()[before:]
        assert "Traceback" not in after and "handler is closed" not in after, after[-3000:]
    finally:
        hold.set()
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)
