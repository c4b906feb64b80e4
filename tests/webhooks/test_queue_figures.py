"""The queue's reads behind the dashboard, on a real SQLite file and a real PostgreSQL schema:
the recent attempts with their endpoint, each endpoint's oldest pending delivery, an event's
store position by id."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tidings.event import Event
from tidings.store import EventStore
from tidings.webhooks.endpoint import Endpoint
from tidings.webhooks.queue import Attempt, DeliveryQueue, Outcome


@pytest.fixture
def queue(store: EventStore) -> Iterator[DeliveryQueue]:
    q = DeliveryQueue(store)  # type: ignore[arg-type]
    q.save_endpoint(Endpoint(id="fig-a", url="http://127.0.0.1:9/a"))
    q.save_endpoint(Endpoint(id="fig-b", url="http://127.0.0.1:9/b"))
    try:
        yield q
    finally:
        q.close()


def test_recent_attempts_oldest_pending_and_event_position(queue: DeliveryQueue) -> None:
    before = time.time()
    accepted = queue.accept([Event(type="fig.made", data={"n": 1})], lambda e: ["fig-a", "fig-b"])
    [(recorded, _)] = accepted
    claimed = {c.delivery.endpoint_id: c for c in queue.claim(10, 30.0)}
    assert set(claimed) == {"fig-a", "fig-b"}, claimed
    a, b = claimed["fig-a"], claimed["fig-b"]
    now = time.time()
    queue.finish(
        [
            Outcome(a.delivery.id, a.lease_token,
                    Attempt(a.delivery.id, 1, now, 0.01, 200, "ok"), "delivered"),
            Outcome(b.delivery.id, b.lease_token,
                    Attempt(b.delivery.id, 1, now, 0.25, 500, "no", "HTTP 500"), "pending",
                    next_attempt_at=now + 60),
        ]
    )  # fmt: skip
    recent = queue.recent_attempts(10)
    assert sorted((ep, at.duration, at.status_code) for ep, at in recent) == [
        ("fig-a", 0.01, 200),
        ("fig-b", 0.25, 500),
    ], recent
    assert [ep for ep, _ in queue.recent_attempts(1)] == ["fig-b"], "newest first, bounded"
    oldest = queue.oldest_pending()
    assert set(oldest) == {"fig-b"}, oldest
    assert before - 1 <= oldest["fig-b"] <= time.time()
    assert queue.event_position(recorded.event.id) == recorded.position
    assert queue.event_position("no-such-event") is None
