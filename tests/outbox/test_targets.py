"""Relay targets: a real broker that goes down and comes back, the event store (each event
once), a Bus, several targets at once."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import require_service
from tests.outbox.conftest import Recorder, connect, rows, wait_until
from tests.outbox.proxy import TcpProxy
from tidings import Bus
from tidings.event import Event, decode
from tidings.outbox import Outbox, Relay
from tidings.publishers import MemoryPublisher, open_publisher
from tidings.retry import RetryPolicy
from tidings.store import open_store
from tidings.transport import TransportError

FAST = RetryPolicy(max_retries=0, initial_delay=0.05, max_delay=0.3)


def _commit(url: str, events: list[Event]) -> None:
    conn = connect(url)
    Outbox().add(conn, events)
    conn.commit()
    conn.close()


@pytest.fixture
def redis_proxy() -> Iterator[TcpProxy]:
    require_service("Redis", "127.0.0.1", 6379)
    proxy = TcpProxy(6379)
    proxy.up()
    yield proxy
    proxy.close()


def test_a_down_broker_keeps_the_rows_logs_once_and_catches_up(
    db_url: str, redis_proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"outbox-down-{uuid.uuid4().hex[:8]}"
    stream = f"{prefix}:events"
    target = open_publisher(
        f"redis://127.0.0.1:{redis_proxy.port}/0?prefix={prefix}", publish_timeout=0.5
    )
    direct = redis.Redis(host="127.0.0.1", port=6379)
    first = [Event(type="outbox.down.e", aggregate_id="k", data={"n": n}) for n in range(5)]
    later = [Event(type="outbox.down.e", aggregate_id="k", data={"n": n}) for n in range(5, 50)]
    relay = Relay(db_url, target, poll_interval=0.05, backoff=FAST, publish_timeout=2.0)
    try:
        with caplog.at_level(logging.INFO, logger="tidings.outbox"):
            relay.start()
            _commit(db_url, first)
            wait_until(lambda: direct.xlen(stream) == 5, 10, lambda: f"{direct.xlen(stream)}")
            redis_proxy.down()
            _commit(db_url, later)
            wait_until(
                lambda: relay.state == "target down" and relay.stats.failures >= 3,
                20,
                lambda: str(relay.health()),
            )
            assert rows(db_url) == [(45,)], "the rows are kept while the broker is away"
            redis_proxy.up()
            wait_until(
                lambda: direct.xlen(stream) >= 50,
                30,
                lambda: f"{direct.xlen(stream)} in the stream; {relay.health()}",
            )
            wait_until(lambda: relay.state == "running", 10, lambda: str(relay.health()))
            relay.stop()
        entries = direct.xrange(stream)
        got = [decode(next(iter(fields.values()))) for _, fields in entries]
        ids = [e.id for e in got]
        assert set(ids) == {e.id for e in first + later}
        first_seen = list(dict.fromkeys(ids))
        assert first_seen == [e.id for e in first + later], "order per key"
        messages = [r.getMessage() for r in caplog.records]
        assert sum("target down" in m for m in messages) == 1, messages
        assert sum("is back" in m for m in messages) == 1, messages
        assert rows(db_url) == [(0,)]
    finally:
        relay.stop()
        direct.delete(stream)
        direct.close()


def test_the_store_target_appends_each_event_once_even_when_published_again(
    db_url: str, tmp_path: object
) -> None:
    store = open_store(f"sqlite:///{tmp_path}/events.db")  # type: ignore[str-bytes-safe]
    events = [Event(type="outbox.store.e", aggregate_id="s", data={"n": n}) for n in range(4)]
    store.append(events[:2])  # as if a killed relay had got this far
    _commit(db_url, events)
    with Relay(db_url, store, poll_interval=0.05):
        wait_until(lambda: store.head() == 4, 10, lambda: f"head {store.head()}")
    assert [r.event.id for r in store.read_all()] == [e.id for e in events]
    store.close()


def test_several_targets_each_get_every_batch_and_a_bus_works_too(db_url: str) -> None:
    bus = Bus()
    seen = Recorder()
    bus.subscribe("outbox.**", seen)
    memory = MemoryPublisher()
    events = [Event(type="outbox.fan.e", data={"n": n}) for n in range(3)]
    _commit(db_url, events)
    with Relay(db_url, [bus, memory], poll_interval=0.05) as relay:
        wait_until(lambda: len(memory.events) == 3, 10, lambda: str(relay.health()))
        assert relay.target.name.startswith("bus Bus + memory")
    assert seen.ids() == [e.id for e in events] == [e.id for e in memory.events]
    bus.close()


def test_a_coroutine_target_is_awaited(db_url: str) -> None:
    got: list[str] = []

    async def handler(event: Event) -> None:
        await asyncio.sleep(0)
        got.append(event.id)

    events = [Event(type="outbox.co.e", data={}) for _ in range(3)]
    _commit(db_url, events)
    with Relay(db_url, handler, poll_interval=0.05):
        wait_until(lambda: len(got) == 3, 10, lambda: f"{got}")
    assert got == [e.id for e in events]


def test_a_lost_database_connection_is_logged_once_and_the_relay_recovers(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay reaches PostgreSQL through a proxy that goes away and comes back."""
    proxy = TcpProxy(5432)
    proxy.up()
    via_proxy = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    got = Recorder()
    relay = Relay(via_proxy, got, poll_interval=0.05, backoff=FAST, connect_timeout=1.0)
    try:
        with caplog.at_level(logging.INFO, logger="tidings.outbox"):
            relay.start()
            _commit(pg_url, [Event(type="outbox.db.e", data={"n": 0})])
            wait_until(lambda: len(got) == 1, 10, lambda: str(relay.health()))
            proxy.down()
            _commit(pg_url, [Event(type="outbox.db.e", data={"n": n}) for n in range(1, 4)])
            wait_until(
                lambda: relay.state == "database down" and relay.stats.failures >= 3,
                20,
                lambda: str(relay.health()),
            )
            proxy.up()
            wait_until(lambda: len(got) == 4, 20, lambda: f"{len(got)}; {relay.health()}")
            relay.stop()
        assert [e.data["n"] for e in got.events] == [0, 1, 2, 3]
        messages = [r.getMessage() for r in caplog.records]
        assert sum("database down" in m for m in messages) == 1, messages
        assert sum("the database is back" in m for m in messages) == 1, messages
    finally:
        relay.stop()
        proxy.close()


def test_a_row_that_is_not_an_event_is_logged_and_does_not_block_the_rest(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = connect(pg_url)
    conn.execute(
        "INSERT INTO tidings_outbox (event_id, type, key, payload) "
        "VALUES ('x', 'hand.written', 'k', '{\"no\": \"envelope\"}')"
    )
    conn.commit()
    good = Event(type="outbox.after.bad", aggregate_id="k", data={})
    Outbox().add(conn, good)
    conn.commit()
    conn.close()
    got = Recorder()
    with caplog.at_level(logging.ERROR, logger="tidings.outbox"), Relay(pg_url, got) as relay:
        wait_until(lambda: len(got) == 1, 10, lambda: str(relay.health()))
    assert got.ids() == [good.id]
    assert any("is not a valid event and is dropped" in r.getMessage() for r in caplog.records)
    assert rows(pg_url) == [(0,)]


def test_a_target_that_cannot_start_fails_the_start_and_leaves_nothing_running(
    sqlite_url: str,
) -> None:
    before = {t.name for t in threading.enumerate()}
    memory = MemoryPublisher()
    relay = Relay(sqlite_url, [memory, "redis://127.0.0.1:1/0"])
    with pytest.raises(TransportError, match=r"127\.0\.0\.1:1"):
        relay.start()
    assert not relay.running
    leftover = {t.name for t in threading.enumerate()} - before
    assert not {n for n in leftover if n.startswith("tidings-relay")}, leftover


def test_a_store_url_target_is_opened_and_closed_by_the_relay(
    db_url: str, tmp_path: object
) -> None:
    events = [Event(type="outbox.storeurl.e", data={"n": n}) for n in range(2)]
    _commit(db_url, events)
    url = f"sqlite:///{tmp_path}/by-url.db"
    with Relay(db_url, f"store+{url}", poll_interval=0.05) as relay:
        assert relay.target.name == f"store {url}"
    store = open_store(url)
    assert [r.event.id for r in store.read_all()] == [e.id for e in events]
    store.close()
