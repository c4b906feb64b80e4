"""The transactional outbox on PostgreSQL and SQLite: what commits is published, what rolls back
is not, bad events fail the transaction, late commits and several relays keep every event and
the order per key."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
import time
from collections import defaultdict
from typing import Any

import psycopg
import pytest

from tests.outbox.conftest import Recorder, connect, rows, wait_until
from tidings.event import Event
from tidings.outbox import Outbox, OutboxError, Relay
from tidings.retry import RetryPolicy


class LinkCreated(Event, type="outbox.test.link_created"):
    link_id: str
    amount: float


def _insert(conn: Any, url: str, link_id: str, amount: float = 1.0) -> None:
    mark = "?" if url.startswith("sqlite") else "%s"
    conn.execute(f"INSERT INTO links (id, amount) VALUES ({mark}, {mark})", (link_id, amount))


def test_committed_events_are_published_with_their_ids_and_types(db_url: str) -> None:
    outbox = Outbox()
    events = [LinkCreated(link_id=f"l{i}", amount=i, aggregate_id=f"l{i}") for i in range(5)]
    conn = connect(db_url)
    for e in events:
        _insert(conn, db_url, e.link_id)
        outbox.add(conn, e)
    conn.commit()
    conn.close()
    got = Recorder()
    with Relay(db_url, got, poll_interval=0.05):
        wait_until(lambda: len(got) == 5, 10, lambda: f"{len(got)} of 5 published")
    assert got.ids() == [e.id for e in events]
    assert all(isinstance(e, LinkCreated) for e in got.events)
    assert [e.amount for e in got.events] == [0, 1, 2, 3, 4]
    assert rows(db_url) == [(0,)]  # published rows are deleted


def test_a_rolled_back_transaction_publishes_nothing(db_url: str) -> None:
    outbox = Outbox()
    got = Recorder()
    with Relay(db_url, got, poll_interval=0.05) as relay:
        conn = connect(db_url)
        _insert(conn, db_url, "gone")
        outbox.add(conn, LinkCreated(link_id="gone", amount=1, aggregate_id="gone"))
        conn.rollback()
        kept = LinkCreated(link_id="kept", amount=2, aggregate_id="kept")
        _insert(conn, db_url, "kept")
        outbox.add(conn, kept)
        conn.commit()
        conn.close()
        wait_until(lambda: len(got) >= 1, 10, lambda: f"published {got.ids()}")
        relay.stop()
    assert got.ids() == [kept.id]
    assert rows(db_url, "SELECT id FROM links") == [("kept",)]


def test_an_event_that_cannot_be_serialized_fails_the_transaction(db_url: str) -> None:
    outbox = Outbox()
    bad = Event(type="outbox.test.bad", data={"when": object()})
    conn = connect(db_url)
    _insert(conn, db_url, "orphan")
    with pytest.raises(OutboxError) as err:
        outbox.add(conn, bad)
    text = str(err.value)
    assert "'outbox.test.bad'" in text and bad.id in text and "serialized" in text
    if db_url.startswith("postgresql"):
        # the transaction is failed in the database too: committing it keeps nothing
        conn.commit()
    else:
        conn.rollback()
    conn.close()
    assert rows(db_url, "SELECT count(*) FROM links") == [(0,)]
    assert rows(db_url) == [(0,)]


def test_an_object_that_is_not_an_event_or_a_type_not_carried_is_refused(db_url: str) -> None:
    class DomainEvent:  # seed 004's own base class, not a tidings Event
        event_type = "payment_link.created"

    conn = connect(db_url)
    with pytest.raises(OutboxError, match=r"expected a tidings Event, got DomainEvent"):
        Outbox().add(conn, DomainEvent())
    conn.rollback()
    strict = Outbox(types=["outbox.test.*"])
    stray = Event(type="paymnet_link.created", data={})
    with pytest.raises(OutboxError) as err:
        strict.add(conn, stray)
    assert "'paymnet_link.created'" in str(err.value) and stray.id in str(err.value)
    assert "types=['outbox.test.*']" in str(err.value)
    conn.rollback()
    strict.add(conn, Event(type="outbox.test.fine", data={}))
    conn.commit()
    conn.close()
    assert rows(db_url) == [(1,)]


def test_a_late_commit_with_a_lower_id_is_published(pg_url: str) -> None:
    """Writer A takes the lower id and commits after writer B: a relay that had moved past B's
    id ("id > last published") would skip A for ever."""
    outbox = Outbox()
    a, b = connect(pg_url), connect(pg_url)
    first = LinkCreated(link_id="a", amount=1, aggregate_id="a")
    second = LinkCreated(link_id="b", amount=2, aggregate_id="b")
    outbox.add(a, first)  # lower id, not committed
    outbox.add(b, second)
    b.commit()
    got = Recorder()
    with Relay(pg_url, got, poll_interval=5.0) as relay:  # wakes on NOTIFY, not on polling
        wait_until(lambda: len(got) == 1, 10, lambda: f"published {got.ids()}")
        assert relay.run_once() == 0  # A's row is invisible, not skipped
        a.commit()
        wait_until(lambda: len(got) == 2, 10, lambda: f"published {got.ids()}")
    assert got.ids() == [second.id, first.id]
    ids = rows(pg_url, "SELECT count(*) FROM tidings_outbox")
    assert ids == [(0,)]
    a.close()
    b.close()


class Gate:
    """A target that holds its first batch until released (a relay stuck mid-publish), then
    records into ``log``, the order both relays published in."""

    def __init__(self, log: Recorder) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.log = log

    def __call__(self, event: Event) -> None:
        self.entered.set()
        assert self.release.wait(20), "gate never released"
        self.log(event)


def test_a_relay_does_not_publish_a_key_another_relay_holds(db_url: str) -> None:
    """Relay 1 holds event 1 of key K (mid-publish); event 2 of K commits; relay 2 must not
    publish it before relay 1 is done, while it may publish other keys."""
    outbox = Outbox()
    conn = connect(db_url)
    one = Event(type="outbox.test.k", aggregate_id="K", data={"n": 1})
    outbox.add(conn, one)
    conn.commit()
    log = Recorder()
    gate = Gate(log)
    relay1 = Relay(db_url, gate, poll_interval=0.05, name="relay-1").start()
    relay2 = Relay(db_url, log, name="relay-2")
    relay2.target.start()
    try:
        assert gate.entered.wait(10), "relay 1 never claimed event 1"
        two = Event(type="outbox.test.k", aggregate_id="K", data={"n": 2})
        other = Event(type="outbox.test.k", aggregate_id="L", data={"n": 1})
        outbox.add(conn, two)
        outbox.add(conn, other)
        conn.commit()
        assert relay2.run_once() == 1  # key L only
        assert log.ids() == [other.id]
        assert relay2.run_once() == 0  # K is still held by relay 1
        gate.release.set()
        wait_until(
            lambda: relay2.run_once() >= 0 and len(log) == 3, 10, lambda: f"published {log.ids()}"
        )
        assert log.ids() == [other.id, one.id, two.id]
        assert rows(db_url) == [(0,)]
    finally:
        gate.release.set()
        relay1.stop()
        if relay2._claims is not None:
            relay2._claims.close()
        conn.close()


def _write(url: str, outbox: Outbox, writer: int, keys: int, per_key: int, per_tx: int) -> None:
    conn = connect(url)
    seqs = [0] * keys
    todo = [k for k in range(keys) for _ in range(per_key)]
    random.Random(writer).shuffle(todo)
    for start in range(0, len(todo), per_tx):
        for k in todo[start : start + per_tx]:
            seqs[k] += 1
            key = f"w{writer}-k{k}"
            outbox.add(conn, Event(type="outbox.test.seq", aggregate_id=key, data={"seq": seqs[k]}))
        conn.commit()
    conn.close()


@pytest.mark.timeout(120)
def test_two_relays_publish_10000_events_from_4_writers_once_each_in_order_per_key(
    db_url: str,
) -> None:
    outbox = Outbox()
    got = Recorder()
    writers, keys, per_key, per_tx = 4, 25, 100, 20  # 4 x 25 x 100 = 10,000 events
    total = writers * keys * per_key
    relays = [
        Relay(db_url, got, poll_interval=0.05, batch_size=200, name=f"relay-{i}").start()
        for i in range(2)
    ]
    try:
        threads = [
            threading.Thread(target=_write, args=(db_url, outbox, w, keys, per_key, per_tx))
            for w in range(writers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        wait_until(
            lambda: len(got) >= total,
            60,
            lambda: (
                f"{len(got)} of {total} published; relays: "
                + "; ".join(str(r.health()) for r in relays)
            ),
        )
    finally:
        for r in relays:
            r.stop()
    seqs: dict[str, list[int]] = defaultdict(list)
    for e in got.events:
        seqs[e.aggregate_id or ""].append(e.data["seq"])
    assert len(got.ids()) == total and len(set(got.ids())) == total, (
        f"{len(got.ids())} published, {len(set(got.ids()))} distinct, {total} committed"
    )
    out_of_order = {k: s for k, s in seqs.items() if s != sorted(s)}
    example = next(iter(out_of_order.items()), None)
    assert not out_of_order, f"{len(out_of_order)} keys out of order, e.g. {example}"
    by_relay = {name: got.by.count(name) for name in set(got.by)}
    print(f"two relays: {total} events, each once, in order per key; by relay {by_relay}")
    assert rows(db_url) == [(0,)]


def test_mark_mode_keeps_published_rows_until_retention(db_url: str) -> None:
    outbox = Outbox()
    conn = connect(db_url)
    outbox.add(conn, Event(type="outbox.test.mark", data={}))
    conn.commit()
    got = Recorder()
    relay = Relay(db_url, got, on_publish="mark", retention=3600)
    relay.target.start()
    assert relay.run_once() == 1
    assert relay.run_once() == 0  # marked rows are not published again
    published = rows(db_url, "SELECT count(*) FROM tidings_outbox WHERE published_at IS NOT NULL")
    assert published == [(1,)]
    assert relay._claims is not None
    assert relay._claims.purge(3600, 100) == 0  # younger than the retention
    assert relay._claims.purge(0, 100) == 1
    assert rows(db_url) == [(0,)]
    relay._claims.close()
    conn.close()


def test_pending_counts_what_waits(db_url: str) -> None:
    outbox = Outbox()
    conn = connect(db_url)
    outbox.add(conn, [Event(type="outbox.test.p", data={}) for _ in range(3)])
    conn.commit()
    conn.close()
    count, age = Relay(db_url, Recorder()).pending()
    assert count == 3 and age >= 0


def test_relay_options_are_checked() -> None:
    with pytest.raises(ValueError, match="postgresql"):
        Relay("mysql://x/y", Recorder())
    with pytest.raises(ValueError, match="on_publish"):
        Relay("sqlite:///x.db", Recorder(), on_publish="keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease"):
        Relay("sqlite:///x.db", Recorder(), lease=5, publish_timeout=10)
    with pytest.raises(TypeError, match="relay target"):
        Relay("sqlite:///x.db", 42)


def test_psycopg_async_connection_writes_with_aadd(pg_url: str) -> None:
    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(pg_url)
        with pytest.raises(OutboxError, match="aadd"):
            Outbox().add(conn, Event(type="outbox.test.async", data={}))
        await Outbox().aadd(conn, Event(type="outbox.test.async", data={}))
        await conn.commit()
        await conn.close()

    asyncio.run(main())
    assert rows(pg_url) == [(1,)]


def test_a_target_that_raises_keeps_the_rows_and_logs_once(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox()
    down = threading.Event()
    down.set()
    got: list[Event] = []

    def flaky(event: Event) -> None:
        if down.is_set():
            raise ConnectionError("broker unreachable")
        got.append(event)

    relay = Relay(
        db_url,
        flaky,
        poll_interval=0.05,
        backoff=RetryPolicy(max_retries=0, initial_delay=0.01, max_delay=0.05),
    )
    conn = connect(db_url)
    events = [Event(type="outbox.test.down", aggregate_id="d", data={"n": n}) for n in range(3)]
    outbox.add(conn, events)
    conn.commit()
    with caplog.at_level(logging.WARNING, logger="tidings.outbox"):
        relay.start()
        wait_until(lambda: relay.stats.failures >= 5, 10, lambda: str(relay.health()))
        assert relay.health()["state"] == "target down"
        assert rows(db_url) == [(3,)]  # kept
        down.clear()
        wait_until(lambda: len(got) == 3, 10, lambda: f"{len(got)} published after recovery")
        relay.stop()
    assert [e.id for e in got] == [e.id for e in events]
    downs = [r for r in caplog.records if "target down" in r.getMessage()]
    backs = [r for r in caplog.records if "is back" in r.getMessage()]
    assert len(downs) == 1 and len(backs) == 1, [r.getMessage() for r in caplog.records]
    assert "broker unreachable" in downs[0].getMessage()
    assert rows(db_url) == [(0,)]
    conn.close()
    time.sleep(0)


def test_an_autocommit_connection_outside_a_transaction_is_refused(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        conn: Any = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        begin = lambda: conn.execute("BEGIN")  # noqa: E731
    else:
        conn = psycopg.connect(db_url, autocommit=True)
        begin = lambda: conn.execute("BEGIN")  # noqa: E731
    with pytest.raises(OutboxError, match="autocommit mode and not in a transaction"):
        Outbox().add(conn, Event(type="outbox.test.auto", data={}))
    begin()
    Outbox().add(conn, Event(type="outbox.test.auto", data={}))
    conn.execute("COMMIT")
    conn.close()
    assert rows(db_url) == [(1,)]
