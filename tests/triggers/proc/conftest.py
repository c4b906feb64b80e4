"""Helpers of the processor tests: settings written as a YAML file and loaded the way the CLI
loads them, a running TriggerService, and waits that print what they saw.

PostgreSQL comes from ``tests.contract.test_store_postgres`` (a migrated schema per test,
selected through the URL's search_path); Redis queues get a prefix of their own. Event types
here live under ``proctest.`` (plus seed 001's ``AgentRegistered``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.triggers.jobs.conftest import wait_for
from tidings.config import Settings, load
from tidings.triggers.service import TriggerService

HOST = "127.0.0.1"


def write_settings(
    tmp_path: Path, store_url: str, triggers: list[dict[str, Any]], **processor: Any
) -> Path:
    """A config file with ``store.url``, ``triggers`` and a ``processor`` section."""
    path = tmp_path / f"tidings-{uuid.uuid4().hex[:6]}.yaml"
    body: dict[str, Any] = {"store": {"url": store_url}, "triggers": triggers}
    if processor:
        body["processor"] = processor
    path.write_text(yaml.safe_dump(body))
    return path


def settings_for(
    tmp_path: Path, store_url: str, triggers: list[dict[str, Any]], **processor: Any
) -> Settings:
    return load(write_settings(tmp_path, store_url, triggers, **processor), env={})


@asynccontextmanager
async def running(settings: Settings, store: Any, **options: Any) -> AsyncIterator[TriggerService]:
    service = TriggerService.from_settings(settings, store, poll_interval=0.02, **options)
    await service.start()
    try:
        yield service
    finally:
        await service.stop(drain=True, timeout=5.0)


def redis_queue() -> str:
    from tests.conftest import require_service  # noqa: PLC0415

    require_service("Redis", HOST, 6379)
    pytest.importorskip("redis")
    return f"redis://{HOST}:6379/0?prefix=proctest-{uuid.uuid4().hex[:12]}"


def pg_rows(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


async def wait_until(
    condition: Callable[[], Any], what: Callable[[], Any], timeout: float = 60.0
) -> None:
    """Await ``condition()`` (sync or async) until true; on timeout fail showing ``what()``
    (the jobs tests' ``wait_for``, with this part's argument order)."""
    await wait_for(condition, timeout, what)


def start_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """A real ``tidings process`` on ``config``, its output appended to ``log``."""
    command = [
        sys.executable, "-m", "tidings", "--config", str(config), "process",
        "--log-level", "warning", "--poll-interval", "0.05", "--action-timeout", "2",
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def wait_ready(proc: subprocess.Popen[bytes], log: Path, starts: int) -> None:
    """Until ``log`` shows ``starts`` ready lines; fail with the log's tail if it died."""
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count("tidings process:") < starts:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"tidings process did not start:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
