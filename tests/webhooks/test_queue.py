"""DeliveryQueue on a real SQLite file and a real PostgreSQL schema (see conftest.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.webhooks.conftest import pg_sql
from tidings.event import Event
from tidings.sqlfiles import load
from tidings.store import Criteria, EventStore, StoreError, open_store
from tidings.webhooks import queue as queue_module
from tidings.webhooks.endpoint import Endpoint
from tidings.webhooks.queue import (
    MAX_RESPONSE_BODY,
    REMOVED_FROM_CONFIG,
    Attempt,
    Claimed,
    DeliveryQueue,
    Outcome,
    WebhookQueueFull,
)


@pytest.fixture
def queue(store: EventStore) -> Iterator[DeliveryQueue]:
    q = DeliveryQueue(store)  # type: ignore[arg-type]
    q.save_endpoint(Endpoint(id="a", url="http://127.0.0.1:9/a"))
    q.save_endpoint(Endpoint(id="b", url="http://127.0.0.1:9/b"))
    try:
        yield q
    finally:
        q.close()


def to_all(_: Event) -> list[str]:
    return ["a", "b"]


def to_a(_: Event) -> list[str]:
    return ["a"]


def events(n: int, type: str = "order.created") -> list[Event]:
    return [Event(type=type, data={"n": i}) for i in range(n)]


def outcome(c: Claimed, state: Any, number: int = 1, **kw: Any) -> Outcome:
    attempt = Attempt(
        c.delivery.id,
        number,
        time.time(),
        0.01,
        kw.pop("status", 200 if state == "delivered" else 500),
        kw.pop("body", "ok"),
        kw.pop("error", None if state == "delivered" else "HTTP 500"),
    )
    return Outcome(c.delivery.id, c.lease_token, attempt, state, **kw)


def count_rows(queue: DeliveryQueue) -> int:
    return len(queue.deliveries(limit=100_000))


# ------------------------------------------------------------------ accept


def test_accept_writes_events_and_deliveries_together(
    store: EventStore, queue: DeliveryQueue
) -> None:
    accepted = queue.accept(events(3), to_all)
    assert [len(ids) for _, ids in accepted] == [2, 2, 2]
    assert [r.position for r, _ in accepted] == [r.position for r in store.read_all()]
    for rec, ids in accepted:
        for did in ids:
            d = queue.delivery(did)
            assert d is not None
            assert (d.event_id, d.position, d.state, d.attempts) == (
                rec.event.id,
                rec.position,
                "pending",
                0,
            )
    assert {d.endpoint_id for d in queue.deliveries()} == {"a", "b"}


def test_a_failing_delivery_insert_rolls_back_the_events(
    store: EventStore, queue: DeliveryQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.accept(events(1), to_a)
    monkeypatch.setattr(queue_module, "new_id", lambda: "same-id-twice")  # PK clash in `also`
    with pytest.raises(StoreError):
        queue.accept(events(2), to_a)
    assert len(store.read_all()) == 1
    assert count_rows(queue) == 1


def test_queue_full_writes_nothing(store: EventStore, queue: DeliveryQueue) -> None:
    queue.accept(events(2), to_a, max_pending=4)
    with pytest.raises(WebhookQueueFull, match=r"2 deliveries pending.*max_pending=3") as info:
        queue.accept(events(2), to_a, max_pending=3)
    assert (info.value.pending, info.value.max_pending, info.value.adding) == (2, 3, 2)
    assert len(store.read_all()) == 2
    assert count_rows(queue) == 2
    queue.accept(events(2), to_a, max_pending=4)  # exactly at the bound is fine
    assert count_rows(queue) == 4


def test_unknown_endpoint_from_route_writes_nothing(
    store: EventStore, queue: DeliveryQueue
) -> None:
    with pytest.raises(ValueError, match=r"unknown endpoint id.*'nope'"):
        queue.accept(events(1), lambda e: ["a", "nope"])
    assert store.read_all() == []


def test_events_without_endpoints_are_still_stored(store: EventStore, queue: DeliveryQueue) -> None:
    accepted = queue.accept(events(2), lambda e: [])
    assert [ids for _, ids in accepted] == [[], []]
    assert len(store.read_all()) == 2


def test_memory_store_is_refused() -> None:
    store = open_store("memory://")
    with pytest.raises(StoreError, match=r"sqlite:///.*postgresql://"):
        DeliveryQueue(store)  # type: ignore[arg-type]


# ------------------------------------------------------------------ claim, lease, finish


def test_claim_returns_the_event_and_leases_the_row(queue: DeliveryQueue) -> None:
    [(rec, [did])] = queue.accept(events(1), to_a)
    [c] = queue.claim(10, 30.0)
    assert c.delivery.id == did
    assert c.delivery.state == "delivering"
    assert c.event == rec.event
    assert queue.claim(10, 30.0) == []  # leased: nobody else gets it


def test_expired_lease_is_taken_over_and_the_old_finish_ignored(queue: DeliveryQueue) -> None:
    [(_, [did])] = queue.accept(events(1), to_a)
    [first] = queue.claim(1, 0.05)
    time.sleep(0.1)
    [second] = queue.claim(1, 30.0)
    assert second.delivery.id == did
    assert second.lease_token != first.lease_token
    assert queue.finish([outcome(first, "delivered")]) == 0
    d = queue.delivery(did)
    assert d is not None
    assert d.state == "delivering"
    assert queue.finish([outcome(second, "delivered")]) == 1
    d = queue.delivery(did)
    assert d is not None
    assert d.state == "delivered"
    assert len(queue.attempts(did)) == 2  # both requests really happened


def test_finish_batch_sets_states_and_logs_attempts(queue: DeliveryQueue) -> None:
    queue.accept(events(3), to_a)
    ok, retry, dead = queue.claim(10, 30.0)
    later = time.time() + 3600
    big = "é" * MAX_RESPONSE_BODY
    changed = queue.finish(
        [
            outcome(ok, "delivered", body=big),
            outcome(retry, "pending", next_attempt_at=later, status=503),
            outcome(dead, "dead", number=4, status=None, error="connection refused"),
        ]
    )
    assert changed == 3
    d_ok, d_retry, d_dead = (queue.delivery(c.delivery.id) for c in (ok, retry, dead))
    assert d_ok is not None
    assert d_retry is not None
    assert d_dead is not None
    assert (d_ok.state, d_ok.attempts, d_ok.last_status) == ("delivered", 1, 200)
    assert d_ok.delivered_at is not None
    assert (d_retry.state, d_retry.next_attempt_at, d_retry.last_status) == (
        "pending",
        later,
        503,
    )
    assert (d_dead.state, d_dead.attempts, d_dead.last_error) == ("dead", 4, "connection refused")
    [a] = queue.attempts(ok.delivery.id)
    assert a.status_code == 200
    assert a.response_body is not None
    assert len(a.response_body.encode()) <= MAX_RESPONSE_BODY
    assert a.response_body == big[: MAX_RESPONSE_BODY // 2]
    [a] = queue.attempts(dead.delivery.id)
    assert (a.number, a.status_code, a.error) == (4, None, "connection refused")
    assert queue.claim(10, 30.0) == []  # the retry is not due for an hour


def test_finish_rejects_pending_without_a_time(queue: DeliveryQueue) -> None:
    queue.accept(events(1), to_a)
    [c] = queue.claim(1, 30.0)
    with pytest.raises(ValueError, match="next_attempt_at"):
        queue.finish([outcome(c, "pending")])


def test_release_makes_rows_due_again_without_an_attempt(queue: DeliveryQueue) -> None:
    queue.accept(events(2), to_a)
    claimed = queue.claim(10, 30.0)
    queue.release([(c.delivery.id, c.lease_token) for c in claimed])
    again = queue.claim(10, 30.0)
    assert sorted(c.delivery.id for c in again) == sorted(c.delivery.id for c in claimed)
    assert all(queue.attempts(c.delivery.id) == [] for c in again)


def test_claim_skips_disabled_and_skipped_endpoints(queue: DeliveryQueue) -> None:
    queue.accept(events(2), to_all)
    queue.set_enabled("a", False, reason="paused")
    assert {c.delivery.endpoint_id for c in queue.claim(10, 30.0, skip_endpoints=["x"])} == {"b"}
    queue.set_enabled("a", True)
    assert queue.claim(10, 30.0, skip_endpoints={"a"}) == []
    assert len(queue.claim(10, 30.0)) == 2


def test_claim_takes_oldest_due_first_and_respects_limit(queue: DeliveryQueue) -> None:
    ids = [queue.accept(events(1), to_a)[0][1][0] for _ in range(5)]  # one due time each
    assert [c.delivery.id for c in queue.claim(2, 30.0)] == ids[:2]
    assert [c.delivery.id for c in queue.claim(10, 30.0)] == ids[2:]


def test_event_gone_from_the_store_makes_the_delivery_dead(
    store_url: str, store: EventStore, queue: DeliveryQueue
) -> None:
    [(rec, [did])] = queue.accept(events(1), to_a)
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            conn.execute("DELETE FROM tidings_events WHERE position = ?", (rec.position,))
    else:
        pg_sql(store_url, "DELETE FROM events WHERE position = %s", (rec.position,))
    assert queue.claim(10, 30.0) == []
    d = queue.delivery(did)
    assert d is not None
    assert d.state == "dead"
    assert "no longer in the store" in (d.last_error or "")


# ------------------------------------------------------------------ endpoints


def test_endpoints_round_trip_and_set_enabled(queue: DeliveryQueue) -> None:
    ep = Endpoint(id="c", url="http://h/c", events=("order.*",), secrets=("whsec_AAAA",))
    queue.save_endpoint(ep)
    assert queue.endpoint("c") == ep
    assert [e.id for e in queue.endpoints()] == ["a", "b", "c"]
    off = queue.set_enabled("c", False, reason="failing for 24h")
    assert (off.enabled, off.disabled_reason) == (False, "failing for 24h")
    assert queue.endpoint("c") == off
    assert queue.endpoint("nope") is None
    with pytest.raises(KeyError, match="'nope' is not known"):
        queue.set_enabled("nope", True)


def test_delete_endpoint_cancels_its_open_deliveries(queue: DeliveryQueue) -> None:
    queue.accept(events(3), to_all)
    done, in_flight = (c for c in queue.claim(2, 30.0) if c.delivery.endpoint_id == "a")
    queue.finish([outcome(done, "delivered")])
    assert queue.delete_endpoint("a") is True
    assert queue.endpoint("a") is None
    states = Counter(d.state for d in queue.deliveries(endpoint_id="a"))
    assert states == {"delivered": 1, "cancelled": 2}
    assert queue.finish([outcome(in_flight, "delivered")]) == 0
    assert {d.state for d in queue.deliveries(endpoint_id="b")} <= {"pending", "delivering"}
    assert queue.delete_endpoint("a") is False


def test_sync_config_endpoints(queue: DeliveryQueue) -> None:
    queue.save_endpoint(Endpoint(id="api", url="http://h/api", source="api"))
    x = Endpoint(id="x", url="http://h/x")
    y = Endpoint(id="y", url="http://h/y")
    queue.sync_config_endpoints([x, y])
    assert queue.endpoint("x") == x
    queue.sync_config_endpoints([y])
    gone = queue.endpoint("x")
    assert gone is not None
    assert (gone.enabled, gone.disabled_reason) == (False, REMOVED_FROM_CONFIG)
    assert queue.endpoint("api") == Endpoint(id="api", url="http://h/api", source="api")
    # back in the config: enabled again; a runtime disable with a reason survives a sync
    queue.set_enabled("y", False, reason="auto-disabled: failing for 24h")
    queue.sync_config_endpoints([x, y])
    back, kept = queue.endpoint("x"), queue.endpoint("y")
    assert back == x
    assert kept is not None
    assert (kept.enabled, kept.disabled_reason) == (False, "auto-disabled: failing for 24h")
    with pytest.raises(ValueError, match="'x' appears twice"):
        queue.sync_config_endpoints([x, x])


# ------------------------------------------------------------------ inspection and replay


def test_retry_and_retry_dead_keep_the_id(queue: DeliveryQueue) -> None:
    queue.accept(events(3), to_a)
    claimed = queue.claim(10, 30.0)
    queue.finish([outcome(c, "dead", number=4) for c in claimed[:2]])
    queue.finish([outcome(claimed[2], "delivered")])
    dead_ids = {c.delivery.id for c in claimed[:2]}
    assert {d.id for d in queue.deliveries(state="dead")} == dead_ids
    assert queue.retry_dead("b") == 0
    assert queue.retry_dead() == 2
    again = queue.claim(10, 30.0)
    assert {c.delivery.id for c in again} == dead_ids
    assert all(c.delivery.attempts == 0 for c in again)
    assert queue.retry(claimed[2].delivery.id) is True  # delivered -> sent again, same id
    [resent] = queue.claim(10, 30.0)
    assert resent.delivery.id == claimed[2].delivery.id
    assert resent.delivery.delivered_at is None
    assert queue.retry("unknown") is False


def test_deliveries_newest_first_paged_and_filtered(queue: DeliveryQueue) -> None:
    accepted = queue.accept(events(5), to_all)
    all_ids = sorted((i for _, ids in accepted for i in ids), reverse=True)
    page1 = queue.deliveries(limit=4)
    page2 = queue.deliveries(limit=4, before=page1[-1].id)
    page3 = queue.deliveries(limit=4, before=page2[-1].id)
    assert [d.id for d in page1 + page2 + page3] == all_ids
    rec, ids = accepted[2]
    assert {d.id for d in queue.deliveries(event_id=rec.event.id)} == set(ids)
    assert len(queue.deliveries(endpoint_id="a", state="pending")) == 5
    with pytest.raises(ValueError, match="state"):
        queue.deliveries(state="lost")


def test_stats(queue: DeliveryQueue) -> None:
    empty = queue.stats()
    assert (empty.pending, empty.oldest_pending_age, empty.per_endpoint) == (0, None, {})
    queue.accept(events(3), to_all)
    time.sleep(0.02)
    a1, a2 = queue.claim(2, 30.0, skip_endpoints=["b"])
    queue.claim(1, 30.0, skip_endpoints=["a"])
    queue.finish([outcome(a1, "delivered"), outcome(a2, "dead")])
    s = queue.stats()
    assert (s.pending, s.delivering, s.delivered, s.dead) == (3, 1, 1, 1)
    assert s.oldest_pending_age is not None
    assert s.oldest_pending_age >= 0.02
    assert s.per_endpoint["a"]["pending"] == 1
    assert s.per_endpoint["a"]["dead"] == 1
    assert s.per_endpoint["b"]["pending"] == 2
    assert s.per_endpoint["b"]["delivering"] == 1


def test_redeliver_since_a_time(store: EventStore, queue: DeliveryQueue) -> None:
    now = datetime.now(UTC)
    old = [Event(type="order.created", time=now - timedelta(days=2)) for _ in range(3)]
    new = [Event(type="order.created", time=now - timedelta(minutes=i)) for i in range(5)]
    store.append(old + new)
    seen: list[int] = []
    created = queue.redeliver(
        Criteria(since=now - timedelta(days=1)), to_all, progress=seen.append, batch=2
    )
    assert created == 10
    assert seen == [2, 4, 5]
    got = Counter(d.event_id for d in queue.deliveries(limit=1000))
    assert got == {e.id: 2 for e in new}
    assert len({d.id for d in queue.deliveries(limit=1000)}) == 10


def test_plan_redeliver_counts_per_endpoint_and_writes_nothing(
    store: EventStore, queue: DeliveryQueue
) -> None:
    store.append(events(3) + events(2, type="user.created"))
    seen: list[int] = []

    def route(e: Event) -> list[str]:
        return ["a", "b"] if e.type == "order.created" else ["b"]

    plan = queue.plan_redeliver(Criteria(), route, progress=seen.append, batch=2)
    assert plan == {"a": 3, "b": 5} and seen == [2, 4, 5]
    assert count_rows(queue) == 0


def test_redeliver_waits_for_room_under_max_pending(
    store: EventStore, queue: DeliveryQueue
) -> None:
    """Each wait drains what is open (as a worker would); the queue never holds more than the
    bound, and every delivery is created in the end."""
    store.append(events(7))
    waits: list[tuple[int, int]] = []
    peak = 0

    def wait(open_now: int, bound: int) -> bool:
        nonlocal peak
        waits.append((open_now, bound))
        claimed = queue.claim(100, 30.0)
        peak = max(peak, len(claimed))
        queue.finish([outcome(c, "delivered") for c in claimed])
        return True

    assert queue.redeliver(Criteria(), to_a, max_pending=3, wait=wait, batch=5) == 7
    assert waits == [(3, 3), (3, 3)], "a page is written as far as there is room"
    assert peak == 3
    assert queue.stats().pending == 1


def test_redeliver_without_room_and_no_wait_is_queue_full(
    store: EventStore, queue: DeliveryQueue
) -> None:
    store.append(events(5))
    with pytest.raises(WebhookQueueFull, match="2 were written first") as info:
        queue.redeliver(Criteria(), to_a, max_pending=2)
    assert (info.value.pending, info.value.written) == (2, 2)
    assert queue.stats().pending == 2
    with pytest.raises(WebhookQueueFull, match="nothing was written"):
        queue.redeliver(Criteria(), to_a, max_pending=2, wait=lambda o, b: False)


async def test_async_wrappers(queue: DeliveryQueue) -> None:
    await queue.aaccept(events(2), to_a)
    claimed = await queue.aclaim(10, 30.0)
    assert len(claimed) == 2
    assert await queue.afinish([outcome(c, "delivered") for c in claimed]) == 2
    assert (await queue.astats()).delivered == 2


# ------------------------------------------------------------------ concurrency and plans


def test_concurrent_claimers_claim_each_delivery_once(
    store: EventStore, queue: DeliveryQueue
) -> None:
    total = 2000
    for _ in range(4):
        queue.accept(events(total // 8), to_all)
    seen: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        q = DeliveryQueue(store)  # type: ignore[arg-type]
        try:
            while True:
                got = q.claim(50, 60.0)
                if not got:
                    return
                with lock:
                    seen.extend(c.delivery.id for c in got)
        except BaseException as exc:
            errors.append(exc)
        finally:
            q.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(seen) == total
    assert len(set(seen)) == total


def test_claim_uses_the_partial_index(store_url: str, queue: DeliveryQueue) -> None:
    queue.accept(events(20), to_all)
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            plan = "\n".join(
                str(r[3])
                for r in conn.execute(
                    "EXPLAIN QUERY PLAN "
                    + load("tidings.webhooks", "sql/sqlite/queries.sql").claim,
                    {"until": 1.0, "token": "t", "now": 1.0, "n": 10, "skip": "[]"},
                )
            )
        assert "tidings_webhook_deliveries_due" in plan
        assert "SCAN tidings_webhook_deliveries" not in plan
        assert "SCAN d\n" not in plan + "\n"
        return
    pg_sql(
        store_url,
        "INSERT INTO tidings_webhook_deliveries (id, event_id, position, endpoint_id, state, "
        "attempts, created_at, updated_at, delivered_at) "
        "SELECT 'old-' || i, 'e-' || i, i, CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END, "
        "'delivered', 1, 0, 0, 0 FROM generate_series(1, 50000) AS i",
    )
    pg_sql(store_url, "ANALYZE tidings_webhook_deliveries")
    params = {"until": 1.0, "token": "t", "now": time.time(), "n": 10, "skip": []}
    plan = "\n".join(
        r[0]
        for r in pg_sql(
            store_url,
            "EXPLAIN " + load("tidings.webhooks", "sql/postgres/queries.sql").claim,
            params,
        )
    )
    assert "tidings_webhook_deliveries_due" in plan
    assert "Seq Scan on tidings_webhook_deliveries" not in plan


def test_two_queues_open_the_schema_at_once(store: EventStore) -> None:
    opened: list[DeliveryQueue] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(DeliveryQueue(store))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(opened) == 3
    for q in opened:
        q.close()


def test_the_queue_tables_are_a_recorded_migration(store_url: str, queue: DeliveryQueue) -> None:
    """Component `webhooks` in tidings_migrations, so later files reach old databases."""
    query = "SELECT version FROM tidings_migrations WHERE component = 'webhooks'"
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            versions = [r[0] for r in conn.execute(query)]
        assert versions == ["001_queue"]
    else:
        assert [r[0] for r in pg_sql(store_url, query)] == ["001_queue.sql"]


# ------------------------------------------------------------------ other sources


def per_event(queue: DeliveryQueue) -> Counter[tuple[str, str]]:
    return Counter((d.event_id, d.endpoint_id) for d in queue.deliveries(limit=100_000))


def test_ingest_gives_an_event_its_deliveries_once_however_often_it_arrives(
    store: EventStore, queue: DeliveryQueue
) -> None:
    """A redelivered message (same event id) makes no second delivery; an event some other
    writer stored without deliveries gets them; a batch with a known event still goes in."""
    batch = events(3)
    assert queue.ingest(batch, to_all) == 6
    assert queue.ingest(batch[:1], to_all) == 0  # redelivered
    assert queue.ingest(batch, to_all) == 0
    foreign = store.append(events(1))[0]  # stored by another writer, no deliveries
    fresh = events(1)[0]
    assert queue.ingest([foreign.event, fresh], to_all) == 4
    assert queue.ingest([foreign.event, fresh], to_all) == 0
    counts = per_event(queue)
    assert len(counts) == 10 and set(counts.values()) == {1}, counts
    ids = [e.id for e in [*batch, foreign.event, fresh]]
    assert [r.event.id for r in store.read_all()] == ids  # each stored once
    rec = next(r for r in store.read_all() if r.event.id == foreign.event.id)
    assert {d.position for d in queue.deliveries(event_id=foreign.event.id)} == {rec.position}


def test_write_deliveries_skips_events_that_have_some_and_endpoints_that_are_gone(
    store: EventStore, queue: DeliveryQueue
) -> None:
    accepted = queue.accept(events(2), to_a)
    recorded = [rec for rec, _ in accepted] + store.append(events(2))
    with queue._db.transaction() as conn:
        made = queue.write_deliveries(conn, recorded, lambda e: ["a", "b", "deleted"])
    assert made == 4  # the two new events, to a and b; not to the unknown endpoint
    counts = per_event(queue)
    assert sorted(counts.values()) == [1] * 6
    assert {ep for (_, ep) in counts} == {"a", "b"}


def test_source_start_is_the_end_of_the_store_when_a_source_first_runs(
    store: EventStore, queue: DeliveryQueue
) -> None:
    store.append(events(3))
    last = store.read_all()[-1].position
    assert queue.source_start("feed") == last
    store.append(events(2))
    assert queue.source_start("feed") == last  # fixed from then on
    assert queue.source_start("other") == last + 2
