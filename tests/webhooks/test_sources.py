"""StoreFeed in one process (SQLite and PostgreSQL): wakes the worker after its commits, and
comes back by itself after the store failed it. tests/server/test_sources.py covers the rest
with second-process writers and `tidings serve`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tidings.event import Event
from tidings.retry import RetryPolicy
from tidings.store import EventStore
from tidings.webhooks import sources
from tidings.webhooks.endpoint import Endpoint
from tidings.webhooks.queue import DeliveryQueue
from tidings.webhooks.sources import StoreFeed
from tidings.webhooks.worker import Router


@pytest.fixture
def queue(store: EventStore) -> Iterator[DeliveryQueue]:
    q = DeliveryQueue(store)  # type: ignore[arg-type]
    q.save_endpoint(Endpoint(id="a", url="http://127.0.0.1:9/a"))
    try:
        yield q
    finally:
        q.close()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def placed(n: int) -> list[Event]:
    return [Event(type="shop.order.placed", source="t", data={"n": i}) for i in range(n)]


def test_the_worker_is_woken_after_the_deliveries_are_committed(
    store: EventStore, queue: DeliveryQueue
) -> None:
    seen_at_wake: list[int] = []
    woken = threading.Event()

    def wake() -> None:  # what the worker would claim at this moment
        seen_at_wake.append(len(queue.deliveries(limit=1000)))
        woken.set()

    feed = StoreFeed(queue, Router(queue.endpoints()), consumer="c", on_deliveries=wake)
    feed.start_sync()
    try:
        store.append(placed(5))
        assert woken.wait(10), "never woken"
        assert seen_at_wake[0] >= 1, "woken before the deliveries were visible"
        wait_for(lambda: len(queue.deliveries()) == 5, "5 deliveries")
        assert feed.health()["ok"] and feed.health()["deliveries_created"] == 5
    finally:
        feed.stop_sync()


def test_a_feed_the_store_failed_starts_again_from_its_checkpoint(
    store: EventStore, queue: DeliveryQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "FEED_RETRY", RetryPolicy(max_retries=1, initial_delay=0.01))
    monkeypatch.setattr(sources, "RESTART_DELAY", (0.05, 0.1))
    router = Router(queue.endpoints())
    failures = 4  # more than the retries: the subscription halts, then is started again

    def flaky(event: Event) -> list[str]:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("database went away")
        return router(event)

    feed = StoreFeed(queue, flaky, consumer="c")
    feed.start_sync()
    try:
        recs = store.append(placed(3))
        wait_for(lambda: len(queue.deliveries()) == 3, "3 deliveries after the restart")
        wait_for(lambda: feed.health()["ok"], "the feed running again")
        assert store.checkpoint("c") == recs[-1].position
        assert sorted(d.event_id for d in queue.deliveries()) == sorted(r.event.id for r in recs)
    finally:
        feed.stop_sync()
