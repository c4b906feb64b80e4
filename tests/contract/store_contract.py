"""The event-store contract: every backend (memory, SQLite, PostgreSQL) passes these tests.

How a backend plugs in (keep this interface stable; backend test files subclass it)::

    class TestSqliteStore(StoreContract):
        @pytest.fixture
        def store_url(self, tmp_path) -> str:          # REQUIRED: a fresh, empty store per test
            return f"sqlite:///{tmp_path}/events.db"

        @pytest.fixture
        def store_options(self) -> dict[str, Any]:      # optional: extra open_store(**options)
            return {}

        # optional, for the exactly-once (transactional) subscription test; the defaults skip:
        def tx_prepare(self, store_url: str) -> None: ...            # create table tx_effects
        def tx_write(self, conn: Any, rec: Recorded) -> None: ...    # insert rec.event.id
        def tx_rows(self, store_url: str) -> list[str]: ...           # the ids inserted

Fixtures the tests use: ``make_store(**extra)`` opens another store on the same URL (closed at
teardown), ``store`` is ``make_store()``. Opening the same URL twice must share data (memory
backends use ``memory://<unique name>``).

What every backend's ``subscribe`` must accept (the shared engine in
``tidings.store.subscription`` provides all of it)::

    store.subscribe(criteria, handler, name=..., retry=RetryPolicy(...), on_error=fn,
                    transactional=False, batch=False, poll_interval=0.05, page_size=500)

and the returned subscription exposes ``name``, ``position``, ``error``, ``running`` and
``stop(timeout)``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tidings.event import Event, EventError
from tidings.retry import RetryPolicy
from tidings.store import (
    NO_STREAM,
    ConcurrencyError,
    Criteria,
    EventStore,
    Recorded,
    StoreError,
    open_store,
)
from tidings.store.replay import replay


class OrderPlaced(Event, type="storetest.order.placed"):
    order_id: str
    amount: float


class OrderShipped(Event, type="storetest.order.shipped"):
    order_id: str


class ItemAdded(Event, type="storetest.cart.item.added"):
    sku: str
    qty: int


FAST_RETRY = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.01)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until true; fail naming ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")


def placed(n: int, **extra: Any) -> list[Event]:
    return [OrderPlaced(order_id=f"o{i}", amount=float(i), **extra) for i in range(n)]


class StoreContract:
    """Behaviour every EventStore keeps. Subclasses provide the ``store_url`` fixture."""

    # ----------------------------------------------------------------- fixtures and hooks

    @pytest.fixture
    def store_url(self) -> str:
        raise NotImplementedError("a backend test class must provide a store_url fixture")

    @pytest.fixture
    def store_options(self) -> dict[str, Any]:
        return {}

    @pytest.fixture
    def make_store(
        self, store_url: str, store_options: dict[str, Any]
    ) -> Iterator[Callable[..., EventStore]]:
        opened: list[EventStore] = []

        def make(**extra: Any) -> EventStore:
            store = open_store(store_url, **{**store_options, **extra})
            opened.append(store)
            return store

        yield make
        for store in reversed(opened):
            store.close()

    @pytest.fixture
    def store(self, make_store: Callable[..., EventStore]) -> EventStore:
        return make_store()

    def tx_prepare(self, store_url: str) -> None:
        pytest.skip("this backend has no SQL connection to share with a handler")

    def tx_write(self, conn: Any, rec: Recorded) -> None:
        raise NotImplementedError

    def tx_rows(self, store_url: str) -> list[str]:
        raise NotImplementedError

    # ----------------------------------------------------------------- append and read

    def test_round_trip_keeps_typed_classes_and_fields(self, store: EventStore) -> None:
        ev = OrderPlaced(
            order_id="o1",
            amount=12.5,
            correlation_id="c1",
            aggregate_id="order-1",
            metadata={"k": [1, 2]},
        )
        plain = Event(type="storetest.plain", data={"x": 1, "s": "é✓"})
        recs = store.append([ev, plain], stream="order-1")
        assert [r.version for r in recs] == [1, 2]
        assert [r.stream for r in recs] == ["order-1", "order-1"]
        assert recs[0].position < recs[1].position
        back = store.read_all()
        assert [r.event.id for r in back] == [ev.id, plain.id]
        got = back[0].event
        assert type(got) is OrderPlaced
        assert got == ev
        assert back[1].event.data == {"x": 1, "s": "é✓"}
        assert back[0].position == recs[0].position
        assert back[0].stream == "order-1" and back[0].version == 1
        assert back[0].recorded_at is not None and back[0].recorded_at.tzinfo is not None

    def test_single_event_and_streamless_events_get_positions(self, store: EventStore) -> None:
        r1 = store.append(OrderShipped(order_id="a"))
        r2 = store.append(placed(2))
        assert len(r1) == 1 and len(r2) == 2
        assert r1[0].stream is None and r1[0].version is None
        positions = [r.position for r in r1 + r2]
        assert positions == sorted(positions) and len(set(positions)) == 3
        assert [r.position for r in store.read_all()] == positions

    def test_global_order_and_paging_by_position(self, store: EventStore) -> None:
        appended: list[Recorded] = []
        for i in range(10):
            appended += store.append(placed(3), stream=f"s{i % 3}")
        seen: list[Recorded] = []
        after = 0
        while page := store.read_all(after_position=after, limit=4):
            assert len(page) <= 4
            seen += page
            after = page[-1].position
        assert [r.event.id for r in seen] == [r.event.id for r in appended]
        assert [r.position for r in seen] == sorted({r.position for r in seen})
        assert store.read_all(after_position=appended[-1].position) == []

    def test_stream_versions_and_load_stream_from_version(self, store: EventStore) -> None:
        assert store.stream_version("cart-1") == 0
        assert store.load_stream("cart-1") == []
        store.append([ItemAdded(sku=f"k{i}", qty=i) for i in range(3)], stream="cart-1")
        store.append(placed(2), stream="other")
        store.append([ItemAdded(sku="k3", qty=3)], stream="cart-1", expected_version=3)
        assert store.stream_version("cart-1") == 4
        assert store.stream_version("other") == 2
        full = store.load_stream("cart-1")
        assert [r.version for r in full] == [1, 2, 3, 4]
        assert [e.event.sku for e in full] == ["k0", "k1", "k2", "k3"]  # type: ignore[attr-defined]
        tail = store.load_stream("cart-1", from_version=3)
        assert [r.version for r in tail] == [3, 4]
        assert store.load_stream("cart-1", from_version=5) == []

    def test_streams_are_listed_by_name_with_their_versions(self, store: EventStore) -> None:
        assert store.streams() == []
        store.append(placed(1))  # no stream: not listed
        store.append(placed(2), stream="b-2")
        store.append(placed(1), stream="a-1")
        store.append(placed(3), stream="c-3")
        store.append(placed(1), stream="a-1")
        assert store.streams() == [("a-1", 2), ("b-2", 2), ("c-3", 3)]
        assert store.streams(limit=2) == [("a-1", 2), ("b-2", 2)]
        assert store.streams(after="b-2") == [("c-3", 3)]
        assert store.streams(after="c-3") == []

    def test_expected_version_no_stream(self, store: EventStore) -> None:
        store.append(placed(1), stream="new", expected_version=NO_STREAM)
        with pytest.raises(ConcurrencyError) as info:
            store.append(placed(1), stream="new", expected_version=NO_STREAM)
        assert (info.value.stream, info.value.expected, info.value.actual) == ("new", 0, 1)
        assert store.stream_version("new") == 1

    def test_concurrency_error_names_stream_and_versions_and_writes_nothing(
        self, store: EventStore
    ) -> None:
        store.append(placed(2), stream="acct-9")
        before = store.read_all()
        with pytest.raises(ConcurrencyError) as info:
            store.append(placed(3), stream="acct-9", expected_version=1)
        err = info.value
        assert (err.stream, err.expected, err.actual) == ("acct-9", 1, 2)
        assert "acct-9" in str(err) and "1" in str(err) and "2" in str(err)
        assert store.read_all() == before
        with pytest.raises(ConcurrencyError):
            store.append(placed(1), stream="acct-9", expected_version=5)
        assert store.stream_version("acct-9") == 2
        # the right version goes through
        store.append(placed(1), stream="acct-9", expected_version=2)
        assert store.stream_version("acct-9") == 3

    def test_a_non_event_in_a_batch_raises_type_error_and_writes_nothing(
        self, store: EventStore
    ) -> None:
        good = placed(2)
        with pytest.raises(TypeError, match="dict"):
            store.append([good[0], {"type": "x"}, good[1]], stream="s")  # type: ignore[list-item]
        with pytest.raises(TypeError, match="str"):
            store.append("order.placed")  # type: ignore[arg-type]
        assert store.read_all() == []
        assert store.stream_version("s") == 0

    def test_an_unencodable_event_in_a_batch_writes_nothing(self, store: EventStore) -> None:
        bad = Event(type="storetest.bad", data={"obj": object()})
        with pytest.raises(EventError):
            store.append([*placed(2), bad], stream="s")
        assert store.read_all() == []

    def test_a_duplicate_event_id_writes_nothing(self, store: EventStore) -> None:
        first = placed(1)
        store.append(first)
        with pytest.raises(StoreError, match=first[0].id):
            store.append([*placed(2), first[0]], stream="dup")
        assert len(store.read_all()) == 1
        assert store.stream_version("dup") == 0

    def test_empty_append_is_a_no_op(self, store: EventStore) -> None:
        assert store.append([], stream="s", expected_version=NO_STREAM) == []
        assert store.read_all() == []

    @pytest.mark.timeout(60)
    def test_batch_of_5000_in_one_append(self, store: EventStore) -> None:
        events = [ItemAdded(sku=f"k{i}", qty=i) for i in range(5000)]
        recs = store.append(events, stream="big")
        assert len(recs) == 5000
        assert [r.version for r in recs] == list(range(1, 5001))
        positions = [r.position for r in recs]
        assert positions == sorted(positions) and len(set(positions)) == 5000
        assert store.stream_version("big") == 5000
        loaded = store.load_stream("big", from_version=4990)
        assert [r.event.sku for r in loaded] == [f"k{i}" for i in range(4989, 5000)]  # type: ignore[attr-defined]
        assert len(store.read_all(limit=10_000)) == 5000

    # ----------------------------------------------------------------- load(criteria)

    @pytest.fixture
    def mixed(self, store: EventStore) -> list[Recorded]:
        """A mixed history: types, streams, correlations, aggregates and times."""
        base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        recs: list[Recorded] = []
        for i in range(30):
            t = base + timedelta(minutes=i)
            kind = i % 3
            ev: Event
            if kind == 0:
                ev = OrderPlaced(order_id=f"o{i}", amount=float(i), time=t)
            elif kind == 1:
                ev = OrderShipped(order_id=f"o{i}", time=t)
            else:
                ev = ItemAdded(sku=f"k{i}", qty=i, time=t)
            ev.correlation_id = f"corr-{i % 4}"
            ev.aggregate_id = f"agg-{i % 5}"
            recs += store.append(ev, stream=f"stream-{i % 2}" if i % 7 else None)
        return recs

    @pytest.mark.parametrize(
        "criteria",
        [
            Criteria(),
            Criteria(types=("storetest.order.placed",)),
            Criteria(types=("storetest.order.placed", "storetest.order.shipped")),
            Criteria(types=("storetest.order.*",)),
            Criteria(types=("storetest.**",)),
            Criteria(types=("storetest.*.*.added",)),
            Criteria(types=("storetest.order.placed", "storetest.cart.**")),
            Criteria(types=("nothing.here",)),
            Criteria(since=datetime(2024, 5, 1, 12, 10, tzinfo=UTC)),
            Criteria(until=datetime(2024, 5, 1, 12, 10, tzinfo=UTC)),
            Criteria(
                since=datetime(2024, 5, 1, 12, 5, tzinfo=UTC),
                until=datetime(2024, 5, 1, 12, 20, tzinfo=UTC),
            ),
            Criteria(correlation_id="corr-1"),
            Criteria(aggregate_id="agg-2"),
            Criteria(stream="stream-1"),
            Criteria(after_position=0, limit=7),
            Criteria(
                types=("storetest.order.*",),
                correlation_id="corr-2",
                since=datetime(2024, 5, 1, 12, 3, tzinfo=UTC),
                limit=3,
            ),
            Criteria(types=("storetest.**",), aggregate_id="agg-0", stream="stream-0"),
            Criteria(types=("storetest.order.shipped",), limit=2),
        ],
        ids=lambda c: repr(c).replace(" ", "")[:80],
    )
    def test_load_matches_the_reference_filter(
        self, store: EventStore, mixed: list[Recorded], criteria: Criteria
    ) -> None:
        expected = [r for r in mixed if criteria.matches(r)]
        if criteria.limit is not None:
            expected = expected[: criteria.limit]
        got = store.load(criteria)
        assert [r.position for r in got] == [r.position for r in expected]
        assert [r.event.id for r in got] == [r.event.id for r in expected]

    def test_load_after_position_pages_through_matches(
        self, store: EventStore, mixed: list[Recorded]
    ) -> None:
        want = [r.position for r in mixed if r.event.type.startswith("storetest.order.")]
        got: list[int] = []
        after = 0
        while page := store.load(
            Criteria(types=("storetest.order.*",), after_position=after, limit=4)
        ):
            got += [r.position for r in page]
            after = page[-1].position
        assert got == want
        # a position in the middle: only later matches
        middle = mixed[15].position
        assert [r.position for r in store.load(Criteria(after_position=middle))] == [
            r.position for r in mixed[16:]
        ]

    # ----------------------------------------------------------------- concurrency

    @pytest.mark.timeout(60)
    def test_concurrent_writers_and_a_paging_reader_see_every_event_once_in_order(
        self, store: EventStore
    ) -> None:
        writers, per_writer = 8, 200
        written: list[str] = []
        written_lock = threading.Lock()
        errors: list[BaseException] = []
        done = threading.Event()

        def write(w: int) -> None:
            try:
                for i in range(per_writer):
                    ev = ItemAdded(sku=f"w{w}-{i}", qty=i)
                    store.append(ev, stream=f"writer-{w}" if i % 2 else None)
                    with written_lock:
                        written.append(ev.id)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        seen: list[Recorded] = []

        def read() -> None:
            after = 0
            try:
                while True:
                    finished = done.is_set()
                    page = store.read_all(after_position=after, limit=50)
                    for rec in page:
                        assert rec.position > after, "positions must only increase"
                        after = rec.position
                    seen.extend(page)
                    if not page and finished:
                        return
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        reader = threading.Thread(target=read)
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        reader.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        reader.join(timeout=30)
        assert not errors, errors
        ids = [r.event.id for r in seen]
        assert len(ids) == writers * per_writer
        assert len(set(ids)) == len(ids), "an event was seen twice"
        assert set(ids) == set(written)
        assert [r.position for r in seen] == [r.position for r in store.read_all(limit=10_000)]
        for w in range(writers):
            assert store.stream_version(f"writer-{w}") == per_writer // 2

    @pytest.mark.timeout(60)
    def test_concurrent_writers_on_one_stream_never_share_a_version(
        self, store: EventStore
    ) -> None:
        conflicts = 0
        lock = threading.Lock()

        def write() -> None:
            nonlocal conflicts
            wins = 0
            while wins < 10:
                version = store.stream_version("hot")
                try:
                    store.append(placed(1), stream="hot", expected_version=version)
                    wins += 1
                except ConcurrencyError as exc:
                    assert exc.actual > version
                    with lock:
                        conflicts += 1

        threads = [threading.Thread(target=write) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.version for r in store.load_stream("hot")] == list(range(1, 41))

    # ----------------------------------------------------------------- async API

    async def test_async_api(self, store: EventStore) -> None:
        recs = await store.aappend(placed(3), stream="async-1")
        assert [r.version for r in recs] == [1, 2, 3]
        with pytest.raises(ConcurrencyError):
            await store.aappend(placed(1), stream="async-1", expected_version=1)
        assert len(await store.aread_all()) == 3
        assert len(await store.aload(Criteria(types=("storetest.order.*",), limit=2))) == 2
        assert [r.version for r in await store.aload_stream("async-1", from_version=2)] == [2, 3]
        results = await asyncio.gather(*(store.aappend(placed(1)) for _ in range(10)))
        assert len({r[0].position for r in results}) == 10

    # ----------------------------------------------------------------- subscriptions

    def test_subscription_catches_up_then_follows_live_in_order_once(
        self, store: EventStore
    ) -> None:
        before = store.append(placed(25), stream="s")
        got: list[Recorded] = []
        sub = store.subscribe(Criteria(), got.append, name="catchup", poll_interval=0.05)
        try:
            wait_until(lambda: len(got) >= 25, what="catch-up")
            after = store.append(placed(5), stream="s")
            after += store.append(placed(5))
            wait_until(lambda: len(got) >= 35, what="live events")
            time.sleep(0.1)
        finally:
            sub.stop(timeout=5)
        assert [r.event.id for r in got] == [r.event.id for r in before + after]
        assert sub.position == after[-1].position
        assert store.checkpoint("catchup") == after[-1].position
        assert sub.running is False

    def test_subscription_filters_by_criteria(self, store: EventStore) -> None:
        got: list[Recorded] = []
        sub = store.subscribe(
            Criteria(types=("storetest.order.*",)), got.append, name="orders", poll_interval=0.05
        )
        try:
            store.append([ItemAdded(sku="a", qty=1), *placed(2), OrderShipped(order_id="x")])
            wait_until(lambda: len(got) >= 3, what="three order events")
            time.sleep(0.1)
        finally:
            sub.stop()
        assert [r.event.type for r in got] == [
            "storetest.order.placed",
            "storetest.order.placed",
            "storetest.order.shipped",
        ]

    def test_head_subscriptions_and_lag_are_what_exporters_read(self, store: EventStore) -> None:
        assert store.head() == 0
        recs = store.append([ItemAdded(sku="a", qty=1), *placed(3), ItemAdded(sku="b", qty=2)])
        assert store.head() == recs[-1].position
        gate = threading.Event()
        entered = threading.Event()

        def held(rec: Recorded) -> None:
            entered.set()
            gate.wait(10)

        sub = store.subscribe(
            Criteria(types=("storetest.order.*",)), held, name="lagging", poll_interval=0.05
        )
        try:
            assert store.subscriptions() == [sub]
            assert entered.wait(5)
            lag = sub.lag()
            assert lag.events == 3  # the cart events after it are not its lag
            assert lag.seconds >= 0
            gate.set()
            assert sub.wait_position(recs[3].position, 5)
            assert sub.lag().events == 0 and sub.lag().seconds == 0
            assert (sub.handled, sub.failed) == (3, 0)
        finally:
            gate.set()
            sub.stop()

    def test_checkpoint_survives_a_restart_without_duplicates(
        self, store: EventStore, make_store: Callable[..., EventStore]
    ) -> None:
        first = store.append(placed(10))
        got: list[Recorded] = []
        sub = store.subscribe(Criteria(), got.append, name="durable", poll_interval=0.05)
        wait_until(lambda: len(got) == 10, what="first ten")
        sub.stop(timeout=5)
        assert store.checkpoint("durable") == first[-1].position
        more = store.append(placed(5))
        # a new store instance on the same URL, as after a process restart
        other = make_store()
        assert other.checkpoint("durable") == first[-1].position
        again: list[Recorded] = []
        sub2 = other.subscribe(Criteria(), again.append, name="durable", poll_interval=0.05)
        try:
            wait_until(lambda: len(again) >= 5, what="the five new events")
            time.sleep(0.15)
        finally:
            sub2.stop()
        assert [r.event.id for r in again] == [r.event.id for r in more]
        assert other.checkpoint("durable") == more[-1].position
        assert store.checkpoint("never-ran") == 0

    def test_reset_subscription_replays_from_a_position(self, store: EventStore) -> None:
        recs = store.append(placed(6))
        got: list[Recorded] = []
        sub = store.subscribe(Criteria(), got.append, name="resettable", poll_interval=0.05)
        wait_until(lambda: len(got) == 6, what="six events")
        sub.stop()
        store.reset_subscription("resettable", recs[2].position)
        assert store.checkpoint("resettable") == recs[2].position
        again: list[Recorded] = []
        sub = store.subscribe(Criteria(), again.append, name="resettable", poll_interval=0.05)
        try:
            wait_until(lambda: len(again) >= 3, what="the replayed tail")
            time.sleep(0.1)
        finally:
            sub.stop()
        assert [r.event.id for r in again] == [r.event.id for r in recs[3:]]
        store.reset_subscription("resettable")
        assert store.checkpoint("resettable") == 0
        with pytest.raises(ValueError):
            store.reset_subscription("resettable", -1)

    def test_a_failing_handler_is_retried_then_halts_and_reports(self, store: EventStore) -> None:
        recs = store.append(placed(5))
        calls: list[str] = []
        errors: list[tuple[Recorded, BaseException]] = []

        def handler(rec: Recorded) -> None:
            calls.append(rec.event.id)
            if rec.position == recs[2].position:
                raise RuntimeError("projection is broken")

        sub = store.subscribe(
            Criteria(),
            handler,
            name="poison",
            retry=FAST_RETRY,
            on_error=lambda rec, exc: errors.append((rec, exc)),
            poll_interval=0.05,
        )
        try:
            wait_until(lambda: not sub.running, what="the subscription to halt")
        finally:
            sub.stop()
        ids = [r.event.id for r in recs]
        assert calls == [ids[0], ids[1], ids[2], ids[2], ids[2]]  # 1 attempt + 2 retries
        assert len(errors) == 1 and errors[0][0].position == recs[2].position
        assert isinstance(sub.error, RuntimeError)
        assert sub.position == recs[1].position
        assert store.checkpoint("poison") == recs[1].position  # not skipped silently

    def test_a_transactional_handler_commits_its_writes_with_the_checkpoint(
        self, store: EventStore, store_url: str
    ) -> None:
        self.tx_prepare(store_url)
        recs = store.append(placed(5))
        failed_once: set[int] = set()

        def handler(rec: Recorded, conn: Any) -> None:
            self.tx_write(conn, rec)
            if rec.position == recs[3].position and rec.position not in failed_once:
                failed_once.add(rec.position)
                raise RuntimeError("fail after writing: the write must roll back")

        sub = store.subscribe(
            Criteria(),
            handler,
            name="tx",
            transactional=True,
            retry=FAST_RETRY,
            poll_interval=0.05,
        )
        try:
            wait_until(lambda: store.checkpoint("tx") == recs[-1].position, what="tx checkpoint")
        finally:
            sub.stop()
        assert self.tx_rows(store_url) == [r.event.id for r in recs]

    def test_a_batch_transactional_handler_commits_a_page_with_the_checkpoint(
        self, store: EventStore, store_url: str
    ) -> None:
        """``batch=True``: one call (one transaction) per page; a failed page rolls back whole
        and is handed over again, and a second subscription of that name skips what is done."""
        self.tx_prepare(store_url)
        recs = store.append(placed(7))
        pages: list[list[int]] = []
        failed = False

        def handler(page: list[Recorded], conn: Any) -> None:
            nonlocal failed
            pages.append([r.position for r in page])
            for rec in page:
                self.tx_write(conn, rec)
            if not failed and recs[4] in page:
                failed = True
                raise RuntimeError("fail after writing: the page must roll back")

        sub = store.subscribe(  # type: ignore[call-arg]
            Criteria(),
            handler,
            name="txb",
            transactional=True,
            batch=True,
            page_size=3,
            retry=FAST_RETRY,
            poll_interval=0.05,
        )
        try:
            wait_until(lambda: store.checkpoint("txb") == recs[-1].position, what="checkpoint")
        finally:
            sub.stop()
        p = [r.position for r in recs]
        assert pages == [p[0:3], p[3:6], p[3:6], p[6:7]], pages
        assert self.tx_rows(store_url) == [r.event.id for r in recs]
        # Another instance of the same subscription (another process, say) that still holds
        # an old position gets nothing handed over again: the stored checkpoint is checked.
        again: list[list[Recorded]] = []
        store.handle_page_in_transaction(  # type: ignore[attr-defined]
            "txb", recs, lambda page, conn: again.append(page)
        )
        assert again == []

    def test_append_also_writes_in_the_same_transaction(
        self, store: EventStore, store_url: str
    ) -> None:
        """``append(also=...)``: rows written beside the events commit, or roll back, with them."""
        self.tx_prepare(store_url)
        seen: list[list[int]] = []

        def also(conn: Any, recorded: list[Recorded]) -> None:
            seen.append([r.position for r in recorded])
            for rec in recorded:
                self.tx_write(conn, rec)

        recs = store.append(placed(3), also=also)  # type: ignore[call-arg]
        assert seen == [[r.position for r in recs]], "called once with the recorded events"
        single = store.append(placed(1), also=also)  # type: ignore[call-arg]

        def also_fails(conn: Any, recorded: list[Recorded]) -> None:
            also(conn, recorded)
            raise RuntimeError("after writing: the events and the rows must both roll back")

        before = store.read_all()
        with pytest.raises(RuntimeError):
            store.append(placed(2), also=also_fails)  # type: ignore[call-arg]
        assert store.read_all() == before
        assert self.tx_rows(store_url) == [r.event.id for r in [*recs, *single]]

    # ----------------------------------------------------------------- replay

    def test_replay_with_progress_into_a_callable_and_a_bus(self, store: EventStore) -> None:
        recs = store.append(placed(25))
        store.append([ItemAdded(sku=f"s{i}", qty=i) for i in range(5)])
        progress: list[tuple[int, int]] = []
        seen: list[Event] = []
        n = replay(
            store,
            seen.append,
            Criteria(types=("storetest.order.placed",)),
            progress=lambda done, total: progress.append((done, total)),
            page_size=10,
        )
        assert n == 25
        assert [e.id for e in seen] == [r.event.id for r in recs]
        assert progress[-1] == (25, 25)
        assert all(t == 25 for _, t in progress)
        assert [d for d, _ in progress] == sorted(d for d, _ in progress)

        class FakeBus:
            def __init__(self) -> None:
                self.published: list[Event] = []

            def publish(self, event: Event) -> None:
                self.published.append(event)

        bus = FakeBus()
        n = replay(store, bus, after_position=recs[19].position, to_position=recs[23].position)
        assert n == 4
        assert [e.id for e in bus.published] == [r.event.id for r in recs[20:24]]

    # ----------------------------------------------------------------- store + bus

    def test_publish_after_commit_in_order_and_not_on_failure(
        self, make_store: Callable[..., EventStore]
    ) -> None:
        published: list[Event] = []
        visible: list[bool] = []
        reader = make_store()

        def publish(event: Event) -> None:
            # the event is committed: another reader already sees it
            visible.append(any(r.event.id == event.id for r in reader.read_all(limit=10_000)))
            published.append(event)

        store = make_store(publish=publish)
        evs = placed(3)
        store.append(evs, stream="pub")
        assert [e.id for e in published] == [e.id for e in evs]
        assert visible == [True, True, True]
        with pytest.raises(ConcurrencyError):
            store.append(placed(2), stream="pub", expected_version=1)
        with pytest.raises(TypeError):
            store.append([*placed(1), "nope"])  # type: ignore[list-item]
        assert len(published) == 3
        more = placed(2)
        store.append(more, stream="pub", expected_version=3)
        assert [e.id for e in published] == [e.id for e in evs + more]

    def test_a_failing_publisher_does_not_undo_the_append(
        self, make_store: Callable[..., EventStore], caplog: pytest.LogCaptureFixture
    ) -> None:
        def publish(event: Event) -> None:
            raise RuntimeError("bus is down")

        store = make_store(publish=publish)
        with caplog.at_level("ERROR"):
            recs = store.append(placed(2), stream="p")
        assert len(recs) == 2
        assert len(store.read_all()) == 2
        assert "bus is down" in caplog.text

    def test_concurrent_appends_publish_in_commit_order(
        self, make_store: Callable[..., EventStore]
    ) -> None:
        published: list[str] = []
        store = make_store(publish=lambda e: published.append(e.id))

        def write() -> None:
            for _ in range(25):
                store.append(placed(2))

        threads = [threading.Thread(target=write) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert published == [r.event.id for r in store.read_all(limit=10_000)]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
