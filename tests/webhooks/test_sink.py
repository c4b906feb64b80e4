"""``tidings.webhooks.attach``: a Bus's events become durable webhook deliveries, once each.

In one process here (SQLite and PostgreSQL); tests/server/test_sources.py runs the same from a
second process against `tidings serve` and real receivers.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tidings import Bus, Event
from tidings.store import open_store
from tidings.webhooks import WebhookSink, attach
from tidings.webhooks import sink as sink_module
from tidings.webhooks.endpoint import Endpoint

ENDPOINTS = [
    Endpoint(id="orders", url="http://127.0.0.1:9/orders", events=("shop.order.*",)),
    Endpoint(id="all", url="http://127.0.0.1:9/all", events=("**",)),
]


def placed(n: int, type: str = "shop.order.placed") -> list[Event]:
    return [Event(type=type, source="test", data={"n": i}) for i in range(n)]


def pairs(sink: WebhookSink) -> Counter[tuple[str, str]]:
    return Counter((d.event_id, d.endpoint_id) for d in sink.queue.deliveries(limit=10_000))


@pytest.fixture
def bus() -> Iterator[Bus]:
    b = Bus()
    yield b
    b.close()


def test_attach_stores_each_published_event_with_its_deliveries(store_url: str, bus: Bus) -> None:
    hooks = attach(bus, store_url, endpoints=ENDPOINTS, worker=False)
    try:
        orders, other = placed(3), placed(2, "user.created")
        for event in [*orders, *other]:
            bus.publish(event)  # inline bus: stored with its deliveries when this returns
        assert [r.event.id for r in hooks.store.read_all()] == [e.id for e in [*orders, *other]]
        assert pairs(hooks) == Counter(
            [(e.id, "orders") for e in orders] + [(e.id, "all") for e in [*orders, *other]]
        )
        bus.publish(orders[0])  # the same event again (a bus retry, a republish)
        assert len(hooks.store.read_all()) == 5
        assert max(pairs(hooks).values()) == 1
    finally:
        hooks.close()
    bus.publish(placed(1)[0])  # detached: nothing more is written, nothing fails


def test_a_store_that_publishes_to_the_bus_gets_deliveries_once(store_url: str, bus: Bus) -> None:
    """The store hands committed events to the bus; the sink finds them stored already."""
    store = open_store(store_url, publish=bus)
    hooks = attach(bus, store, endpoints=ENDPOINTS, worker=False)
    try:
        recs = store.append(placed(4))
        assert len(store.read_all()) == 4
        assert pairs(hooks) == Counter((r.event.id, ep) for r in recs for ep in ("orders", "all"))
        positions = {d.event_id: d.position for d in hooks.queue.deliveries(limit=100)}
        assert positions == {r.event.id: r.position for r in recs}
    finally:
        hooks.close()
        store.close()  # a store passed in stays open after close(): closed by its owner


def test_endpoints_come_from_a_config_file_and_later_changes_are_seen(
    tmp_path: Path, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    config = tmp_path / "tidings.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "events": {
                    "enabled": True,
                    "webhooks": {
                        "billing": {"url": "http://127.0.0.1:9/b", "events": ["shop.order.*"]}
                    },
                }
            }
        )
    )
    monkeypatch.setattr(sink_module, "REFRESH", 0.0)
    hooks = attach(bus, url, config=config, worker=False)
    try:
        first = placed(1)[0]
        bus.publish(first)
        assert pairs(hooks) == Counter([(first.id, "billing")])
        # registered later (say through tidings serve's API on the same store)
        hooks.queue.save_endpoint(Endpoint(id="late", url="http://127.0.0.1:9/l", events=("**",)))
        second = placed(1)[0]
        bus.publish(second)
        assert pairs(hooks) == Counter(
            [(first.id, "billing"), (second.id, "billing"), (second.id, "late")]
        )
    finally:
        hooks.close()


def test_attach_refuses_a_store_that_is_not_durable(bus: Bus) -> None:
    with pytest.raises(Exception, match="webhook delivery needs a durable store"):
        attach(bus, "memory://sink-test", worker=False)
    assert bus.subscriptions() == []


def test_the_bus_does_not_import_webhooks() -> None:
    """Layering: webhooks sit above the bus; importing the bus must not pull them in."""
    code = (
        "import sys, tidings, tidings.bus; "
        "print(any(m.startswith('tidings.webhooks') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
