"""tidings.integrations.prometheus: scrape the exposition text of real objects and check values.

Every test publishes, handles and fails events on a real Bus (inline and async), a real SQLite
store subscription, a real Redis transport on loopback and a real `tidings serve`, then reads the
text Prometheus would scrape and compares numbers, not just names.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.conftest import require_service
from tests.server.conftest import Running, serve  # noqa: F401 - the serve fixture
from tests.test_docs import blocks
from tidings import Bus, Event, RetryPolicy
from tidings.bus import BusQueueFull
from tidings.integrations.prometheus import TidingsCollector, instrument
from tidings.store import open_store
from tidings.store.base import Criteria, Recorded
from tidings.transport import SubscribeOptions
from tidings.transports import open_transport

ROOT = Path(__file__).resolve().parent.parent
REDIS = "redis://127.0.0.1:6379/0"


class OrderPlaced(Event, type="mt.order.placed"):
    order_id: str = ""


class OrderShipped(Event, type="mt.order.shipped"):
    order_id: str = ""


class Job(Event, type="mt.job.run"):
    n: int = 0


class BadJob(Event, type="mt.job.bad"):
    n: int = 0


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        near = sorted(str(k) for k in samples if k[0] == name) or sorted({k[0] for k in samples})
        raise AssertionError(f"no sample {name}{labels}; present: {near}")
    return samples[key]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


async def await_for(check: Callable[[], bool], what: Callable[[], str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s; {what()}")
        await asyncio.sleep(0.01)


# ---- installation ------------------------------------------------------------------------------


def test_import_without_prometheus_client_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n"
        "    import tidings.integrations.prometheus\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "needs the prometheus-client package" in proc.stdout
    assert "pip install 'tidings[server]'" in proc.stdout


def test_instrument_refuses_what_it_cannot_export_and_a_taken_name() -> None:
    registry = CollectorRegistry()
    with pytest.raises(TypeError, match="expected a tidings Bus, Transport, EventStore"):
        instrument(object(), registry=registry)  # type: ignore[arg-type]
    first, second = Bus(), Bus()
    instrument(first, registry=registry)
    instrument(first, registry=registry)  # the same bus again: nothing changes
    with pytest.raises(ValueError, match="a bus named 'default' is already exported"):
        instrument(second, registry=registry)
    instrument(second, registry=registry, name="second")
    with pytest.raises(ValueError, match="expected distinct upper bounds"):
        instrument(Bus(), registry=registry, name="third", buckets=[0.1, 0.1])


# ---- the in-process Bus ------------------------------------------------------------------------


def test_inline_bus_counts_every_outcome_per_handler_and_times_attempts() -> None:
    bus = Bus(retry=RetryPolicy(max_retries=1, initial_delay=0.001))
    seen: set[str] = set()

    def flaky(event: Event) -> None:
        if event.id not in seen:  # fails once per event, then the retry succeeds
            seen.add(event.id)
            raise ConnectionError("flaky")

    def broken(event: Event) -> None:
        raise ValueError("broken")

    bus.subscribe("mt.order.*", lambda e: None, name="audit")
    bus.subscribe("mt.order.placed", flaky, name="flaky")
    bus.subscribe("mt.order.placed", broken, name="broken")
    registry = CollectorRegistry()
    instrument(bus, registry=registry)  # after three subscriptions, before the fourth
    bus.subscribe("mt.order.shipped", lambda e: time.sleep(0.03), name="slow")

    for i in range(3):
        bus.publish(OrderPlaced(order_id=str(i)))
    bus.publish(OrderShipped(order_id="0"))
    assert bus.drain(10)
    s = scrape(registry)

    def handler(name: str, handler: str, pattern: str) -> float:
        return value(s, name, bus="default", handler=handler, pattern=pattern)

    assert value(s, "tidings_bus_events_published_total", bus="default") == 4
    expected = {  # handler: (handled, failed, retried, dead)
        ("audit", "mt.order.*"): (4, 0, 0, 0),
        ("flaky", "mt.order.placed"): (3, 3, 3, 0),
        ("broken", "mt.order.placed"): (0, 6, 3, 3),
        ("slow", "mt.order.shipped"): (1, 0, 0, 0),
    }
    for (name, pattern), counts in expected.items():
        got = tuple(
            handler(f"tidings_bus_events_{what}_total", name, pattern)
            for what in ("handled", "failed", "retried", "dead_lettered")
        )
        assert got == counts, (name, got)
        attempts = counts[0] + counts[1]
        assert handler("tidings_bus_handler_duration_seconds_count", name, pattern) == attempts
    slow = {"bus": "default", "handler": "slow", "pattern": "mt.order.shipped"}
    assert value(s, "tidings_bus_handler_duration_seconds_bucket", le="0.025", **slow) == 0
    assert value(s, "tidings_bus_handler_duration_seconds_bucket", le="0.05", **slow) == 1
    assert value(s, "tidings_bus_handler_duration_seconds_sum", **slow) >= 0.03
    assert value(s, "tidings_bus_dead_letters", bus="default") == 3
    assert value(s, "tidings_bus_retries_pending", bus="default") == 0
    assert value(s, "tidings_bus_queue_depth", bus="default") == 0
    assert bus.close(5).drained


async def test_a_coroutine_handler_run_as_a_task_is_counted_once() -> None:
    bus = Bus()

    async def good(event: Event) -> None:
        return None

    async def bad(event: Event) -> None:
        raise ValueError("bad")

    bus.subscribe("mt.order.placed", good, name="good", retry=RetryPolicy(max_retries=0))
    bus.subscribe("mt.order.placed", bad, name="bad", retry=RetryPolicy(max_retries=0))
    registry = CollectorRegistry()
    instrument(bus, registry=registry, latency=False)
    bus.publish(OrderPlaced(order_id="1"))  # sync publish inside a loop: handlers become tasks
    assert (await bus.aclose(5)).drained
    s = scrape(registry)
    labels = {"bus": "default", "pattern": "mt.order.placed"}
    assert value(s, "tidings_bus_events_handled_total", handler="good", **labels) == 1
    assert value(s, "tidings_bus_events_failed_total", handler="good", **labels) == 0
    assert value(s, "tidings_bus_events_handled_total", handler="bad", **labels) == 0
    assert value(s, "tidings_bus_events_failed_total", handler="bad", **labels) == 1
    assert not any(k[0].startswith("tidings_bus_handler_duration") for k in s)  # latency=False


def test_async_bus_exports_queue_depth_capacity_and_full_queue_outcomes() -> None:
    gate, entered = threading.Event(), threading.Event()

    def hold(event: Event) -> None:
        entered.set()
        gate.wait(10)

    registry = CollectorRegistry()
    buses = {
        policy: Bus(mode="async", workers=1, buffer_size=2, when_full=policy)
        for policy in ("drop", "block", "raise")
    }
    for policy, bus in buses.items():
        bus.subscribe("mt.order.placed", hold, name="hold")
        instrument(bus, registry=registry, name=policy, latency=False)
        entered.clear()
        bus.publish(OrderPlaced(order_id="taken"))  # the worker takes it and holds
        assert entered.wait(5), policy
        bus.publish(OrderPlaced(order_id="q1"))
        bus.publish(OrderPlaced(order_id="q2"))  # the queue (capacity 2) is full
    buses["drop"].publish(OrderPlaced(order_id="dropped"))
    with pytest.raises(BusQueueFull):
        buses["raise"].publish(OrderPlaced(order_id="refused"))
    blocked = threading.Thread(target=buses["block"].publish, args=(OrderPlaced(order_id="w"),))
    blocked.start()
    wait_for(lambda: buses["block"].stats.blocked == 1, "the blocked publish")

    s = scrape(registry)
    for policy in buses:
        assert value(s, "tidings_bus_queue_depth", bus=policy) == 2, policy
        assert value(s, "tidings_bus_queue_capacity", bus=policy) == 2, policy
    assert value(s, "tidings_bus_events_dropped_total", bus="drop") == 1
    assert value(s, "tidings_bus_publish_blocked_total", bus="block") == 1
    assert value(s, "tidings_bus_publish_rejected_total", bus="raise") == 1
    assert value(s, "tidings_bus_events_dropped_total", bus="block") == 0

    gate.set()
    blocked.join(10)
    for bus in buses.values():
        assert bus.drain(10)
    s = scrape(registry)
    handled = {"drop": 3, "block": 4, "raise": 3}
    for policy, count in handled.items():
        labels = {"bus": policy, "handler": "hold", "pattern": "mt.order.placed"}
        assert value(s, "tidings_bus_events_handled_total", **labels) == count, policy
        assert value(s, "tidings_bus_queue_depth", bus=policy) == 0
    assert value(s, "tidings_bus_events_published_total", bus="drop") == 4
    assert value(s, "tidings_bus_events_published_total", bus="block") == 4
    for bus in buses.values():
        assert bus.close(5).drained


# ---- a store subscription on SQLite -------------------------------------------------------------


def test_sqlite_store_subscriptions_export_position_lag_and_halt(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'events.db'}")
    gate, entered = threading.Event(), threading.Event()

    def project(rec: Recorded) -> None:
        entered.set()
        gate.wait(10)

    def broken(rec: Recorded) -> None:
        raise ValueError("cannot")

    before = time.time()
    events: list[Event] = []
    for i in range(5):
        events.append(OrderPlaced(order_id=str(i)))
        if i < 2:
            events.append(OrderShipped(order_id=str(i)))
    recorded = store.append(events)
    stored = time.time()
    last_placed = max(r.position for r in recorded if r.event.type == "mt.order.placed")
    projector = store.subscribe(Criteria(types=("mt.order.placed",)), project, name="projector")
    halting = store.subscribe(  # type: ignore[call-arg]
        Criteria(types=("mt.order.shipped",)),
        broken,
        name="shipping",
        retry=RetryPolicy(max_retries=1, initial_delay=0.001),
    )
    registry = CollectorRegistry()
    instrument(store, registry=registry)
    assert entered.wait(5)
    wait_for(lambda: not halting.running, "the shipping subscription to halt")

    scraped_at = time.time()
    s = scrape(registry)
    done_at = time.time()
    assert value(s, "tidings_store_up", store="sqlite") == 1
    assert value(s, "tidings_store_head_position", store="sqlite") == 7
    p = {"subscription": "projector"}
    assert value(s, "tidings_store_subscription_position", **p) == 0
    assert value(s, "tidings_store_subscription_lag_events", **p) == 5
    lag = value(s, "tidings_store_subscription_lag_seconds", **p)
    assert scraped_at - stored - 0.002 <= lag <= done_at - before + 0.002, lag
    assert value(s, "tidings_store_subscription_running", **p) == 1
    assert value(s, "tidings_store_subscription_halted", **p) == 0
    h = {"subscription": "shipping"}
    assert value(s, "tidings_store_subscription_halted", **h) == 1
    assert value(s, "tidings_store_subscription_running", **h) == 0
    assert value(s, "tidings_store_subscription_events_failed_total", **h) == 2
    assert value(s, "tidings_store_subscription_events_handled_total", **h) == 0
    assert value(s, "tidings_store_subscription_lag_events", **h) == 2

    gate.set()
    assert projector.wait_position(last_placed, 10)
    s = scrape(registry)
    assert value(s, "tidings_store_subscription_position", **p) == last_placed
    assert value(s, "tidings_store_subscription_events_handled_total", **p) == 5
    assert value(s, "tidings_store_subscription_lag_events", **p) == 0
    assert value(s, "tidings_store_subscription_lag_seconds", **p) == 0

    alone = CollectorRegistry()  # one subscription on its own: no store head
    instrument(projector, registry=alone)
    s = scrape(alone)
    assert value(s, "tidings_store_subscription_position", **p) == last_placed
    assert not any(k[0].startswith("tidings_store_head") for k in s)
    store.close()
    s = scrape(registry)  # a closed store: up 0, and the scrape still answers
    assert value(s, "tidings_store_up", store="sqlite") == 0


# ---- a real transport: Redis on loopback --------------------------------------------------------


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"tm-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = Redis.from_url(REDIS)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_redis_transport_exports_publishes_consumption_and_state(redis_prefix: str) -> None:
    transport = open_transport(f"{REDIS}?prefix={redis_prefix}")
    await transport.start()
    registry = CollectorRegistry()
    instrument(transport, registry=registry)

    async def handle(event: Event) -> None:
        if event.type == "mt.job.bad":
            raise ValueError("bad job")

    options = SubscribeOptions(group="workers", retry=RetryPolicy(max_retries=1, initial_delay=0))
    sub = await transport.subscribe("mt.job.*", handle, options)
    await transport.publish_many([Job(n=i) for i in range(3)])
    await transport.publish(BadJob(n=9))
    labels = {"transport": "redis", "pattern": "mt.job.*", "group": "workers"}

    def settled() -> bool:
        s = scrape(registry)
        return (
            s.get(("tidings_transport_events_handled_total", tuple(sorted(labels.items())))) == 3
            and s.get(
                ("tidings_transport_events_dead_lettered_total", tuple(sorted(labels.items())))
            )
            == 1
        )

    await await_for(settled, lambda: str(scrape(registry)), 10)
    s = scrape(registry)
    assert value(s, "tidings_transport_events_published_total", transport="redis") == 4
    assert value(s, "tidings_transport_events_received_total", **labels) == 4
    assert value(s, "tidings_transport_events_failed_total", **labels) == 2
    assert value(s, "tidings_transport_events_retried_total", **labels) == 1
    assert value(s, "tidings_transport_events_undecodable_total", **labels) == 0
    assert value(s, "tidings_transport_state", transport="redis", state="connected") == 1
    assert value(s, "tidings_transport_state", transport="redis", state="closed") == 0
    await sub.close()
    await transport.close()
    s = scrape(registry)
    assert value(s, "tidings_transport_state", transport="redis", state="closed") == 1
    assert value(s, "tidings_transport_state", transport="redis", state="connected") == 0


def test_a_bus_on_redis_exports_its_handlers_and_its_transport(redis_prefix: str) -> None:
    bus = Bus(transport=f"{REDIS}?prefix={redis_prefix}", group="billing")
    got: list[str] = []
    bus.subscribe("mt.job.*", lambda e: got.append(e.id), name="bill")
    registry = CollectorRegistry()
    instrument(bus, registry=registry, name="orders")
    for i in range(3):
        bus.publish(Job(n=i))
    wait_for(lambda: len(got) == 3, "3 jobs handled")
    labels = {"bus": "orders", "handler": "bill", "pattern": "mt.job.*"}
    wait_for(
        lambda: (
            scrape(registry).get(
                ("tidings_bus_events_handled_total", tuple(sorted(labels.items())))
            )
            == 3
        ),
        "the consumer to count 3 handled",
    )
    s = scrape(registry)
    assert value(s, "tidings_bus_events_published_total", bus="orders") == 3
    assert value(s, "tidings_bus_handler_duration_seconds_count", **labels) == 3
    assert value(s, "tidings_transport_events_published_total", transport="orders") == 3
    consumer = {"transport": "orders", "pattern": "mt.job.*", "group": "billing"}
    assert value(s, "tidings_transport_events_received_total", **consumer) == 3
    assert bus.close(5).drained


# ---- tidings serve's /metrics -------------------------------------------------------------------


async def test_serve_metrics_show_the_store_families_beside_the_webhook_ones(
    serve: Any,  # noqa: F811 - the fixture imported above
) -> None:
    app: Running = await serve({"events": {"enabled": True, "endpoints": {}}})
    for i in range(2):
        status, body = await app.post(
            "/events", {"type": "mt.order.placed", "source": "test", "data": {"i": i}}
        )
        assert status == 202, body
    handled: list[int] = []
    sub = app.service.store.subscribe(  # what a store-fed source runs (issue 9, item 14)
        Criteria(), lambda rec: handled.append(rec.position), name="webhook-source"
    )
    await await_for(lambda: sub.position >= 2, lambda: f"position {sub.position}", 10)
    status, text = await app.get("/metrics")
    assert status == 200
    s = parse(text)
    assert value(s, "tidings_events_published_total") == 2  # what /metrics showed before
    assert value(s, "tidings_store_up", store="sqlite") == 1
    assert value(s, "tidings_store_head_position", store="sqlite") == 2
    source = {"subscription": "webhook-source"}
    assert value(s, "tidings_store_subscription_position", **source) == 2
    assert value(s, "tidings_store_subscription_lag_events", **source) == 0
    assert value(s, "tidings_store_subscription_events_handled_total", **source) == 2
    sub.stop()


# ---- the docs page runs as written --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _snippets() -> list[str]:
    """The page's Python blocks as tests/test_docs.py reads them (which leaves this page to
    this test: RUN_ELSEWHERE there), marked not-run ones left out."""
    page = blocks(ROOT / "docs" / "metrics.md")
    return [b.code for b in page if b.lang == "python" and not (b.mark and b.mark[0] == "not-run")]


# What each snippet of docs/metrics.md, in page order, must serve.
SNIPPET_SHOWS = [
    [
        'tidings_bus_events_published_total{bus="default"} 1.0',
        'tidings_bus_events_handled_total{bus="default",handler="audit",pattern="order.*"} 1.0',
        'tidings_store_head_position{store="sqlite"} 1.0',
    ],
    ['tidings_bus_queue_capacity{bus="api"} 1000.0'],
]


def test_docs_snippets_run_and_serve_the_families(tmp_path: Path) -> None:
    snippets = _snippets()
    assert len(snippets) == len(SNIPPET_SHOWS)
    for i, code in enumerate(snippets):
        port = _free_port()
        script = tmp_path / f"snippet_{i}.py"
        # A free port instead of the documented 9464, which another test run may hold.
        script.write_text(code.replace("9464", str(port)) + SNIPPET_CHECK.format(port=port))
        proc = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, f"snippet {i}:\n{code}\n{proc.stderr}"
        for line in SNIPPET_SHOWS[i]:
            assert line in proc.stdout.splitlines(), (i, line, proc.stdout)


# Appended to each snippet: scrape what it serves over real HTTP and print it.
SNIPPET_CHECK = """

import asyncio as _asyncio
import urllib.request as _request

if "app" in globals():  # the Starlette snippet: serve the app with uvicorn, then scrape
    import uvicorn as _uvicorn

    async def _serve_and_scrape():
        server = _uvicorn.Server(_uvicorn.Config(app, port={port}, log_level="warning"))
        task = _asyncio.ensure_future(server.serve())
        while not server.started:
            await _asyncio.sleep(0.01)
        body = await _asyncio.to_thread(
            lambda: _request.urlopen("http://127.0.0.1:{port}/metrics/", timeout=10).read()
        )
        server.should_exit = True
        await task
        return body

    print(_asyncio.run(_serve_and_scrape()).decode())
else:
    print(_request.urlopen("http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
"""


def test_a_collector_object_serves_a_registry_of_ones_own() -> None:
    collector = TidingsCollector()
    bus = Bus()
    collector.add(bus, name="mine", latency=False)
    bus.publish(OrderPlaced(order_id="1"))
    registry = CollectorRegistry()
    registry.register(collector)
    assert value(scrape(registry), "tidings_bus_events_published_total", bus="mine") == 1
