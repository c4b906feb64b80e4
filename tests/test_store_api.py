"""open_store, Criteria, replay and the subscription engine's edges (backend-independent)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from datetime import datetime

import pytest

from tests.contract.store_contract import OrderPlaced, placed, wait_until
from tidings.event import Event
from tidings.retry import RetryPolicy
from tidings.store import (
    AfterCommit,
    Criteria,
    EventStore,
    Recorded,
    StoreError,
    as_events,
    open_store,
    redact_url,
)
from tidings.store.memory import MemoryStore
from tidings.store.replay import replay
from tidings.store.sqlite import SqliteStore
from tidings.topics import PatternError


@pytest.fixture
def store() -> EventStore:
    s = open_store("memory://")
    yield s  # type: ignore[misc]
    s.close()


# ------------------------------------------------------------------ open_store


@pytest.mark.parametrize("url", ["", "events.db", None, 42])
def test_open_store_needs_a_url_with_a_scheme(url: object) -> None:
    with pytest.raises(StoreError, match="scheme://"):
        open_store(url)  # type: ignore[arg-type]


def test_open_store_names_unknown_schemes_and_hides_passwords() -> None:
    with pytest.raises(StoreError) as info:
        open_store("mongodb://admin:hunter2@db/events")
    message = str(info.value)
    assert "mongodb" in message and "sqlite" in message and "postgresql" in message
    assert "hunter2" not in message


def test_redact_url() -> None:
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_open_store_picks_the_backend_by_scheme(tmp_path: object) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    s = open_store(f"sqlite:///{tmp_path}/x.db")
    try:
        assert isinstance(s, SqliteStore)
    finally:
        s.close()


@pytest.mark.skipif(
    importlib.util.find_spec("tidings.store.postgres") is None,
    reason="the PostgreSQL backend is not in this tree yet",
)
def test_postgres_without_psycopg_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "tidings.store.postgres", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StoreError, match=r"pip install 'tidings\[postgres\]'"):
        open_store("postgresql://postgres@127.0.0.1/postgres")


def test_unknown_options_are_rejected(tmp_path: object) -> None:
    with pytest.raises(TypeError, match="colour"):
        open_store("memory://", colour="blue")
    with pytest.raises(TypeError, match="colour"):
        open_store(f"sqlite:///{tmp_path}/x.db", colour="blue")


def test_memory_urls_fresh_or_shared_by_name() -> None:
    a, b = open_store("memory://"), open_store("memory://")
    a.append(placed(1))
    assert b.read_all() == []
    name = f"memory://shared-{uuid.uuid4().hex}"
    c, d = open_store(name), open_store(name)
    c.append(placed(2))
    assert len(d.read_all()) == 2


# ------------------------------------------------------------------ input checks


def test_as_events_names_what_was_given() -> None:
    e = placed(1)[0]
    assert as_events(e) == [e]
    assert as_events((e,)) == [e]
    for bad, word in ((None, "NoneType"), ({"type": "x"}, "dict"), (b"x", "bytes"), (3, "int")):
        with pytest.raises(TypeError, match=word):
            as_events(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1 is a str"):
        as_events([e, "x"])  # type: ignore[list-item]


def test_expected_version_needs_a_stream(store: EventStore) -> None:
    with pytest.raises(ValueError, match="stream="):
        store.append(placed(1), expected_version=0)
    assert store.read_all() == []


def test_criteria_validation() -> None:
    assert Criteria(types="order.*").types == ("order.*",)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="after_position"):
        Criteria(after_position=-1)
    with pytest.raises(ValueError, match="limit"):
        Criteria(limit=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        Criteria(since=datetime(2024, 1, 1))
    with pytest.raises(PatternError):
        Criteria(types=("order.*x",))
    with pytest.raises(TypeError, match="Criteria"):
        open_store("memory://").load({"types": ["x"]})  # type: ignore[arg-type]


def test_after_commit_accepts_a_callable_or_a_bus_like_object() -> None:
    class BusLike:
        def __init__(self) -> None:
            self.got: list[Event] = []

        def publish(self, event: Event) -> None:
            self.got.append(event)

    bus = BusLike()
    pub = AfterCommit(bus)
    pub.enqueue(placed(2))
    pub.drain()
    assert len(bus.got) == 2
    with pytest.raises(TypeError, match="publish"):
        AfterCommit(42)


def test_a_publisher_that_appends_again_does_not_deadlock() -> None:
    store = open_store("memory://")
    seen: list[str] = []

    def publish(event: Event) -> None:
        seen.append(event.type)
        if event.type == "storetest.order.placed":
            store.append(Event(type="storetest.follow.up"))

    store = open_store("memory://", publish=publish)
    store.append(placed(1))
    assert seen == ["storetest.order.placed", "storetest.follow.up"]
    assert len(store.read_all()) == 2


# ------------------------------------------------------------------ replay


def test_replay_progress_and_limits(store: EventStore) -> None:
    recs = store.append(placed(12))
    progress: list[tuple[int, int]] = []
    got: list[Recorded] = []
    n = replay(
        store,
        got.append,
        Criteria(limit=7),
        progress=lambda d, t: progress.append((d, t)),
        page_size=3,
        records=True,
    )
    assert n == 7
    assert [r.position for r in got] == [r.position for r in recs[:7]]
    assert progress == [(3, 7), (6, 7), (7, 7)]
    empty: list[tuple[int, int]] = []
    assert (
        replay(
            store,
            got.append,
            Criteria(types=("none.*",)),
            progress=lambda d, t: empty.append((d, t)),
        )
        == 0
    )
    assert empty == [(0, 0)]


def test_replay_stops_at_a_failing_target_and_resumes(store: EventStore) -> None:
    recs = store.append(placed(5))
    got: list[Event] = []
    down = [True]

    def target(event: Event) -> None:
        if event.id == recs[3].event.id and down[0]:
            down[0] = False
            raise RuntimeError("target down")
        got.append(event)

    with pytest.raises(RuntimeError, match="target down"):
        replay(store, target)
    assert len(got) == 3
    # resume from the last event handed over: the failed one comes again
    assert replay(store, target, after_position=recs[2].position) == 2
    assert [e.id for e in got] == [r.event.id for r in recs]


def test_replay_rejects_bad_targets(store: EventStore) -> None:
    with pytest.raises(TypeError, match="publish"):
        replay(store, 42)
    store.append(placed(1))

    async def coro(event: Event) -> None:
        return None

    with pytest.raises(TypeError, match="apublish"):
        replay(store, coro)


# ------------------------------------------------------------------ subscription engine


def test_subscribe_checks_its_arguments(store: EventStore) -> None:
    with pytest.raises(ValueError, match="name"):
        store.subscribe(Criteria(), print, name="")
    with pytest.raises(TypeError, match="callable"):
        store.subscribe(Criteria(), 42, name="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Criteria"):
        store.subscribe("order.*", print, name="x")  # type: ignore[arg-type]


def test_an_async_handler_is_awaited(store: EventStore) -> None:
    got: list[str] = []

    async def handler(rec: Recorded) -> None:
        await asyncio.sleep(0)
        got.append(rec.event.id)

    store.append(placed(3))
    sub = store.subscribe(Criteria(), handler, name="async")
    try:
        wait_until(lambda: len(got) == 3, what="three awaited events")
    finally:
        sub.stop()
    assert store.checkpoint("async") == 3


def test_stop_during_retries_keeps_the_event_for_next_time(store: EventStore) -> None:
    store.append(placed(2))
    calls: list[int] = []

    def handler(rec: Recorded) -> None:
        calls.append(rec.position)
        raise RuntimeError("always")

    sub = store.subscribe(
        Criteria(),
        handler,
        name="slow-retry",
        retry=RetryPolicy(max_retries=5, initial_delay=10, max_delay=10),
    )
    wait_until(lambda: calls == [1], what="the first attempt")
    sub.stop(timeout=2)
    assert not sub.running
    assert sub.error is None  # stopped, not failed
    assert store.checkpoint("slow-retry") == 0


def test_wait_position(store: EventStore) -> None:
    sub = store.subscribe(Criteria(), lambda rec: None, name="wait")
    try:
        recs = store.append(placed(4))
        assert sub.wait_position(recs[-1].position, timeout=5)  # type: ignore[attr-defined]
        assert not sub.wait_position(99, timeout=0.05)  # type: ignore[attr-defined]
    finally:
        sub.stop()


def test_typed_events_come_back_typed_from_memory(store: EventStore) -> None:
    store.append(OrderPlaced(order_id="x", amount=1.0))
    assert type(store.read_all()[0].event) is OrderPlaced


def test_one_name_runs_once_per_store(store: EventStore) -> None:
    sub = store.subscribe(Criteria(), lambda rec: None, name="solo")
    try:
        with pytest.raises(StoreError, match="already running"):
            store.subscribe(Criteria(), lambda rec: None, name="solo")
    finally:
        sub.stop()
    store.subscribe(Criteria(), lambda rec: None, name="solo").stop()


def test_a_transactional_handler_must_not_commit_itself(tmp_path: object) -> None:
    s = open_store(f"sqlite:///{tmp_path}/tx.db")
    errors: list[BaseException] = []

    def handler(rec: Recorded, conn: object) -> None:
        conn.execute("COMMIT")  # type: ignore[attr-defined]

    try:
        s.append(placed(1))
        sub = s.subscribe(
            Criteria(),
            handler,
            name="tx-commit",
            transactional=True,
            retry=RetryPolicy.none(),
            on_error=lambda rec, exc: errors.append(exc),
        )
        wait_until(lambda: not sub.running, what="the subscription to halt")
        assert isinstance(sub.error, StoreError) and "COMMIT" in str(sub.error)
        assert s.checkpoint("tx-commit") == 0
    finally:
        s.close()
