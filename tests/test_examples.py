"""Every example under examples/ runs and does what its docs say."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from tests.conftest import require_service
from tests.contract.tansu import TansuBroker, TansuUnavailable, free_port
from tests.outbox.conftest import admin
from tidings.store import open_store

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart_publishes_typed_events_through_the_bus() -> None:
    out = run_example("quickstart.py")
    assert "closed: drained: nothing left unfinished" in out
    assert "audit trail: 4 events" in out
    assert "receipts: 3" in out
    assert out.count("causation=01") == 3
    assert "dead letter: payment_link.archived -> flaky-webhook: webhook receiver is down" in out
    assert '"specversion":"1.0"' in out and '"type":"payment_link.created"' in out


def test_event_sourcing_example_rebuilds_projects_and_replays() -> None:
    out = run_example("event_sourcing.py")
    assert "rebuilt: owner=ada balance=120 v4" in out
    assert "conflict: expected v2, stream at v4" in out
    assert "projection: {'account-1': 125} checkpoint=5" in out
    assert "resumed: {'account-1': 126}" in out
    assert "replayed 6 events: {'account-1': 126}" in out
    assert "bus saw 6 events after commit" in out


def test_transport_memory_example_moves_events_through_a_group() -> None:
    out = run_example("transport_memory.py")
    assert "audit saw 41 events" in out
    assert "billed 20 orders, each once: True" in out
    assert "both billing workers took part: True" in out
    assert (
        "dead letter: order.placed after 2 attempts: ValueError: order bad: negative amount -1.0"
        in out
    )
    assert "closed: every bus drained" in out


def test_every_example_is_covered_by_a_test() -> None:
    # webhook_receiver.py runs against a real `tidings serve` in tests/server/test_serve_process.py
    tested = {
        "quickstart.py",
        "event_sourcing.py",
        "transport_memory.py",
        "webhook_receiver.py",
        "payment_links",
    }
    examples = {p.name for p in (ROOT / "examples").iterdir() if p.suffix == ".py" or p.is_dir()}
    assert examples - {"__pycache__"} <= tested


# --- examples/payment_links: seed 004's service, end to end ----------------------------------


def _http(method: str, url: str, body: object = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)


async def _kafka_records(bootstrap: str, topics: list[str], want: int) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 30
        while len(out) < want and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                out += [json.loads(r.value) for r in records]
        # anything more (a duplicate) arrives within a second too
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            out += [json.loads(r.value) for r in records]
    finally:
        await consumer.stop()
    return out


@pytest.mark.timeout(180)
def test_payment_links_example_emits_each_change_once_to_kafka_and_the_store(
    tmp_path: Path,
) -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    try:
        broker = TansuBroker()
        broker.start()
    except TansuUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI requires Tansu: {exc}", pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {exc}")
    name = f"payment_links_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{name}"')
    db = f"postgresql://postgres@127.0.0.1:5432/{name}"
    prefix = f"wedi{uuid.uuid4().hex[:6]}.events"
    port = free_port()
    log = tmp_path / "uvicorn.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")},
        "DATABASE_URL": db,
        "EVENT_PUBLISHER_TYPE": "redpanda",
        "REDPANDA_BROKERS": broker.bootstrap,
        "REDPANDA_TOPIC_PREFIX": prefix,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT / "examples" / "payment_links",
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if _http("GET", base + "/openapi.json")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        corr = {"X-Correlation-ID": "corr-e2e-1"}
        status, link, headers = _http(
            "POST",
            base + "/payment-links",
            {"organization_id": "org-1", "amount": "25.00", "currency": "usd"},
            corr,
        )
        assert status == 201, link
        assert headers["x-correlation-id"] == "corr-e2e-1"
        link_id = link["id"]
        assert _http("PATCH", f"{base}/payment-links/{link_id}", {"amount": "30"}, corr)[0] == 200
        # no change, no event; a bad request and an unknown link commit nothing
        assert _http("PATCH", f"{base}/payment-links/{link_id}", {"amount": "30"}, corr)[0] == 200
        assert _http("POST", base + "/payment-links", {"amount": "-1"}, corr)[0] == 422
        assert _http("PATCH", f"{base}/payment-links/nope", {"amount": "1"}, corr)[0] == 404
        assert _http("POST", f"{base}/payment-links/{link_id}/archive", None, corr)[0] == 200
        assert _http("POST", f"{base}/payment-links/{link_id}/archive", None, corr)[0] == 200

        with psycopg.connect(db) as conn:
            row = conn.execute(
                "SELECT amount, archived FROM payment_links WHERE id = %s", (link_id,)
            ).fetchone()
            assert row is not None and float(row[0]) == 30.0 and row[1] is True
            assert conn.execute("SELECT count(*) FROM payment_links").fetchone() == (1,)
        store = open_store(db)
        try:
            deadline = time.monotonic() + 30
            while store.head() < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            stored = [r.event for r in store.read_all()]
        finally:
            store.close()
        assert [e.type for e in stored] == [
            "payment_link.created",
            "payment_link.updated",
            "payment_link.archived",
        ], stored
        assert {e.aggregate_id for e in stored} == {link_id}
        assert {e.correlation_id for e in stored} == {"corr-e2e-1"}
        topics = [f"{prefix}.payment_link.{t}" for t in ("created", "updated", "archived")]
        records = asyncio.run(_kafka_records(broker.bootstrap, topics, 3))
        assert sorted(r["id"] for r in records) == sorted(e.id for e in stored), records
        assert {r["correlationid"] for r in records} == {"corr-e2e-1"}
        created = next(r for r in records if r["type"] == "payment_link.created")
        assert created["data"]["amount"] == 25.0 and created["data"]["currency"] == "USD"
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM tidings_outbox").fetchone() == (0,)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.stop()
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
