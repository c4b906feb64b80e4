"""Webhooks fed from any source: events written by a SECOND PROCESS reach every endpoint once.

``events.source: store`` follows the event store (SQLite, PostgreSQL, including plain SQL
INSERTs into seed 001's table), a transport URL consumes a broker (Redis here), and
``tidings.webhooks.attach`` hooks an application's Bus. The writers are subprocesses
(``tests/server/feeders.py``); real local receivers count what arrives. "Once" is checked on
both sides: one delivery row per (event, endpoint) in the database, and one request per row.
A `kill -9` of `tidings serve` in the middle of a stream, then a restart, must lose nothing
and write no second delivery row for any event and endpoint.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_service
from tests.server.conftest import Receiver, Running, free_port, wait_healthy
from tests.server.test_webhooks import FAST, wait_until
from tests.webhooks.conftest import BASE, HOST, PORT, pg_sql
from tidings.store import open_store
from tidings.webhooks.endpoint import Endpoint
from tidings.webhooks.queue import DeliveryQueue

Start = Callable[..., Awaitable[Running]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379/0"


# ---- helpers --------------------------------------------------------------------------------


async def feed(*args: str, timeout: float = 120.0) -> list[str]:
    """Run tests/server/feeders.py in a second process; the ids it committed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.server.feeders",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    lines = out.decode().split()
    assert proc.returncode == 0 and lines[-1:] == ["done"], err.decode()[-3000:]
    return lines[:-1]


def hooks(*receivers: Receiver, **events: Any) -> dict[str, Any]:
    """An events section with one named endpoint per receiver (e0, e1, ...)."""
    named = {f"e{i}": {"url": r.url, "events": ["shop.order.*"]} for i, r in enumerate(receivers)}
    return {"enabled": True, **FAST, "webhooks": named, **events}


def check_once(
    rows: Sequence[tuple[str, str, str, int]], receivers: list[Receiver], ids: list[str]
) -> None:
    """``rows``: (event id, endpoint id, state, attempts) of every delivery. Each event has
    exactly one delivery row per endpoint, delivered in one attempt, and each receiver got
    each event exactly once."""
    per_pair = Counter((event_id, endpoint) for event_id, endpoint, _, _ in rows)
    twice = {k: n for k, n in per_pair.items() if n > 1}
    assert not twice, f"{len(twice)} (event, endpoint) pairs have more than one delivery row"
    endpoints = [f"e{i}" for i in range(len(receivers))]
    assert set(per_pair) == {(i, e) for i in ids for e in endpoints}, (
        f"{len(per_pair)} delivery rows for {len(ids)} events x {len(endpoints)} endpoints"
    )
    for i, rec in enumerate(receivers):
        got = Counter(r.headers["tidings-event-id"] for r in rec.requests)
        assert set(got) == set(ids), f"e{i}: {len(set(ids) - set(got))} events never arrived"
        assert set(got.values()) == {1}, f"e{i}: {sum(got.values()) - len(got)} sent twice"


async def all_delivered(app: Running, count: int, timeout: float = 30.0) -> list[Any]:
    """Every delivery row once ``count`` of them are delivered (and none is left open)."""
    queue = app.service.queue
    rows: list[Any] = []

    def done() -> bool:
        nonlocal rows
        rows = queue.deliveries(limit=100_000)
        return sum(d.state == "delivered" for d in rows) >= count and all(
            d.state == "delivered" for d in rows
        )

    try:
        await wait_until(lambda: asyncio.to_thread(done), timeout, f"{count} deliveries")
    except AssertionError:
        states = Counter(d.state for d in rows)
        raise AssertionError(f"expected {count} delivered, have {dict(states)}") from None
    return [(d.event_id, d.endpoint_id, d.state, d.attempts) for d in rows]


@pytest.fixture
def pg_store() -> Iterator[str]:
    """A fresh migrated schema in a fresh database (seed 001's trigger on, as shipped)."""
    require_service("PostgreSQL", HOST, PORT)
    migrate = pytest.importorskip("tidings.store.migrate").migrate
    name = f"tidings_test_{uuid.uuid4().hex[:12]}"
    pg_sql(f"{BASE}/postgres", f'CREATE DATABASE "{name}"')
    try:
        url = f"{BASE}/{name}"
        migrate(url)
        yield url
    finally:
        pg_sql(f"{BASE}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    require_service("Redis", "127.0.0.1", 6379)
    from redis import Redis  # noqa: PLC0415 -- the redis extra, only for this fixture

    prefix = f"ts-{uuid.uuid4().hex[:12]}"
    yield prefix
    with Redis.from_url(REDIS) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)


# ---- the store as the source ----------------------------------------------------------------


async def test_store_source_on_sqlite_delivers_what_another_process_appends(
    serve: Start, receiver: MakeReceiver, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'tidings.db'}"
    history = await feed("append", url, "3")  # stored before the service ever followed it
    a, b = await receiver(), await receiver()
    app = await serve({"store": {"url": url}, "events": hooks(a, b, source="store")})
    # POST /events still works, and its events are not delivered a second time by the feed
    status, body = await app.post(
        "/events",
        [{"type": "shop.order.placed", "source": "t", "data": {"n": n}} for n in range(5)],
    )
    assert status == 202 and body["deliveries"] == 10, body
    ids = body["ids"] + await feed("append", url, "300", "--batch", "25")
    rows = await all_delivered(app, 2 * len(ids))
    check_once(rows, [a, b], ids)
    assert not set(history) & {r[0] for r in rows}, "the history before the source ran was sent"
    status, health = await app.get("/health")
    assert status == 200 and health["source"]["kind"] == "store", health
    assert health["source"]["consumer"] == "tidings-webhooks", health


async def test_store_source_on_postgresql_delivers_tidings_appends_and_plain_sql_inserts(
    serve: Start, receiver: MakeReceiver, pg_store: str
) -> None:
    a, b = await receiver(), await receiver()
    app = await serve({"store": {"url": pg_store}, "events": hooks(a, b, source="store")})
    appended, inserted = await asyncio.gather(
        feed("append", pg_store, "200", "--batch", "20"),
        feed("sql", pg_store, "100"),  # seed 001: INSERT INTO events, no tidings in the writer
    )
    ids = appended + inserted
    rows = await all_delivered(app, 2 * len(ids))
    check_once(rows, [a, b], ids)
    # the feed was woken by LISTEN, not only by polling: it is the store's own listener
    listener = app.service.store.listener  # type: ignore[attr-defined]
    assert listener is not None and listener.is_alive()


# ---- a transport as the source --------------------------------------------------------------


async def test_redis_source_delivers_published_events_once_even_when_redelivered(
    serve: Start, receiver: MakeReceiver, redis_prefix: str
) -> None:
    source = f"{REDIS}?prefix={redis_prefix}"
    a = await receiver()
    app = await serve({"events": hooks(a, source=source, source_ack_wait="2s")})
    ids = await feed("publish", source, "200", "--repeat", "2")  # the first 20 go out 3 times
    rows = await all_delivered(app, len(ids))
    check_once(rows, [a], ids)
    stored = app.service.store.read_all(0, 10_000)
    assert sorted(r.event.id for r in stored) == sorted(ids), "each event stored once"
    status, health = await app.get("/health")
    assert status == 200 and health["source"]["state"] == "connected", health
    assert health["source"]["received"] >= len(ids) and "prefix" in health["source"]["url"]


# ---- the in-process Bus as the source -------------------------------------------------------


async def test_a_bus_in_another_process_feeds_tidings_serve_on_the_same_store(
    serve: Start, receiver: MakeReceiver, tmp_path: Path
) -> None:
    """attach(bus, store, worker=False): the app writes events and deliveries, serve sends."""
    url = f"sqlite:///{tmp_path / 'tidings.db'}"
    a, b = await receiver(), await receiver()
    app = await serve({"store": {"url": url}, "events": hooks(a, b)})
    ids = await feed("bus", url, "150")
    rows = await all_delivered(app, 2 * len(ids))
    check_once(rows, [a, b], ids)


async def test_a_bus_with_webhooks_attached_delivers_by_itself(
    receiver: MakeReceiver, tmp_path: Path
) -> None:
    """attach(bus, store) with its own worker: no tidings serve at all."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    a = await receiver()
    store = open_store(url)
    queue = DeliveryQueue(store)  # type: ignore[arg-type]
    queue.save_endpoint(Endpoint(id="e0", url=a.url, events=("shop.order.*",)))
    queue.close()
    store.close()
    ids = await feed("bus", url, "100", "--worker", "--wait-delivered", "100")
    await a.wait_for(len(ids))
    store = open_store(url)
    queue = DeliveryQueue(store)  # type: ignore[arg-type]
    try:
        rows = [
            (d.event_id, d.endpoint_id, d.state, d.attempts) for d in queue.deliveries(limit=10_000)
        ]
    finally:
        queue.close()
        store.close()
    assert {r[2] for r in rows} == {"delivered"}
    check_once(rows, [a], ids)


# ---- kill -9 of tidings serve in the middle of a stream --------------------------------------


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidings", "--config", str(config), "serve", "--log-level", "info"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _rows(store_url: str) -> list[tuple[str, str, str, int]]:
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            return list(
                conn.execute(
                    "SELECT event_id, endpoint_id, state, attempts FROM tidings_webhook_deliveries"
                )
            )
    return [
        (r[0], r[1], r[2], r[3])
        for r in pg_sql(
            store_url,
            "SELECT event_id, endpoint_id, state, attempts FROM tidings_webhook_deliveries",
        )
    ]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_kill_9_mid_stream_then_restart_loses_and_duplicates_nothing(
    kind: str, receiver: MakeReceiver, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    events = 1200
    rec = await receiver()
    store_url = f"sqlite:///{tmp_path / 'tidings.db'}"
    source = "store"
    if kind == "postgres":
        store_url = request.getfixturevalue("pg_store")
    elif kind == "redis":
        source = f"{REDIS}?prefix={request.getfixturevalue('redis_prefix')}"
    port = free_port()
    config = tmp_path / "tidings.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": store_url},
                "server": {"port": port, "lease": "4s", "sender_process": False},
                "events": hooks(rec, source=source, source_ack_wait="1s", queue_size=10 * events),
            }
        )
    )
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = _serve(config, log)
    writer: asyncio.Task[list[str]] | None = None
    try:
        await wait_healthy(url, proc, log)
        # a steady stream from a second process: about 3 s of it
        what = "publish" if kind == "redis" else "append"
        extra = [] if kind == "redis" else ["--batch", "10", "--pause", "0.02"]
        writer = asyncio.ensure_future(
            feed(what, source if kind == "redis" else store_url, str(events), *extra)
        )
        deadline = time.monotonic() + 60
        while len(rec.requests) < events // 8:
            assert time.monotonic() < deadline, f"deliveries did not start: {log.read_text()}"
            await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before = len(rec.requests)
        proc = _serve(config, log)
        await wait_healthy(url, proc, log)
        ids = await writer
        assert before < len(ids), "everything arrived before the kill: the test proves nothing"

        def done() -> bool:
            rows = _rows(store_url)
            return len(rows) >= len(ids) and all(r[2] == "delivered" for r in rows)

        await wait_until(lambda: asyncio.to_thread(done), 90, f"{len(ids)} delivered rows")
        rows = _rows(store_url)
        per_pair = Counter((r[0], r[1]) for r in rows)
        assert max(per_pair.values()) == 1, "a second delivery row for an event and endpoint"
        assert set(per_pair) == {(i, "e0") for i in ids}
        got = {r.headers["tidings-event-id"] for r in rec.requests}
        assert got == set(ids), f"{len(set(ids) - got)} events never arrived"
        per_event: dict[str, set[str]] = {}
        for r in rec.requests:  # at-least-once over HTTP: a repeat is the same message
            per_event.setdefault(r.headers["tidings-event-id"], set()).add(r.headers["webhook-id"])
        assert all(len(m) == 1 for m in per_event.values()), "a redelivery got a new id"
        print(f"kill -9 ({kind}): {before} arrived before, {len(rec.requests)} requests in all")
    finally:
        if writer is not None and not writer.done():
            writer.cancel()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def test_an_unreachable_broker_leaves_serve_running_and_health_says_why(
    serve: Start, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    app = await serve({"events": {"source": f"redis://:hunter2@127.0.0.1:{port}/0"}})
    status, health = await app.get("/health")
    assert status == 503 and health["status"] == "unhealthy", health
    source = health["source"]
    assert source["ok"] is False and source["url"] == f"redis://:***@127.0.0.1:{port}/0"
    assert f"cannot reach Redis at 127.0.0.1:{port}" in source["error"], source
    status, body = await app.post("/events", {"type": "shop.order.placed", "source": "t"})
    assert status == 202, body  # POST /events goes on meanwhile
    await wait_until(lambda: "trying again" in caplog.text, what="the retry log line")
    assert "hunter2" not in caplog.text and "Traceback" not in caplog.text
