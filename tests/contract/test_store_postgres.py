"""PostgreSQL event store: the store contract, plus what only PostgreSQL has.

Every test gets its own database on 127.0.0.1:5432 (created, migrated, dropped at teardown).
Beyond the contract: the gap problem with rollbacks and slow commits, a LISTEN connection killed
with pg_terminate_backend mid-stream, seed 001's ``new_event`` trigger, clear errors for an
unreachable or unmigrated database, partitions and retention, and the migrated schema checked
against the intent of the .sql files.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import require_service
from tests.contract.store_contract import StoreContract, placed, wait_until
from tidings.event import Event
from tidings.store import (
    ConcurrencyError,
    Criteria,
    Recorded,
    SchemaMissing,
    StoreError,
    StoreUnavailable,
    open_store,
)

psycopg = pytest.importorskip("psycopg")

from tidings.store.migrate import migrate, migrations, set_seed_notify  # noqa: E402
from tidings.store.postgres import CHANNEL, SEED_CHANNEL, PostgresStore  # noqa: E402

HOST, PORT = "127.0.0.1", 5432
BASE = f"postgresql://postgres@{HOST}:{PORT}"


def _admin(sql: str) -> None:
    with psycopg.connect(f"{BASE}/postgres", autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def empty_db() -> Iterator[str]:
    """A fresh database without the tidings schema; dropped (connections and all) afterwards."""
    require_service("PostgreSQL", HOST, PORT)
    name = f"tidings_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{BASE}/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def session_db() -> Iterator[str]:
    """One database for the session; each test gets its own schema in it (faster than a
    database per test: about 100 ms instead of 250 ms here)."""
    require_service("PostgreSQL", HOST, PORT)
    name = f"tidings_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{BASE}/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(session_db: str) -> Iterator[str]:
    """A fresh migrated schema, selected through the URL's search_path; dropped afterwards."""
    require_service("PostgreSQL", HOST, PORT)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    _sql(session_db, f'CREATE SCHEMA "{schema}"')
    url = f"{session_db}?options=-csearch_path%3D{schema}"
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(session_db, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _sql(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


class TestPostgresStoreContract(StoreContract):
    @pytest.fixture
    def store_url(self, db: str) -> str:
        return db

    @pytest.fixture
    def store_options(self) -> dict[str, Any]:
        return {"pool_size": 12}

    def tx_prepare(self, store_url: str) -> None:
        _sql(store_url, "CREATE TABLE tx_effects (seq serial PRIMARY KEY, id text NOT NULL)")

    def tx_write(self, conn: Any, rec: Recorded) -> None:
        conn.execute("INSERT INTO tx_effects (id) VALUES (%s)", (rec.event.id,))

    def tx_rows(self, store_url: str) -> list[str]:
        return [r[0] for r in _sql(store_url, "SELECT id FROM tx_effects ORDER BY seq")]


# --------------------------------------------------------------------- the gap problem


def _raw_insert(conn: Any, event_id: str) -> None:
    """An INSERT as an external writer would do it: position from the column default."""
    conn.execute(
        "INSERT INTO events (id, type, source, time, payload) VALUES (%s, 'gap.raw', 'test', "
        "now(), json_build_object('specversion', '1.0', 'id', %s::text, 'source', 'test', "
        "'type', 'gap.raw'))",
        (event_id, event_id),
    )


def test_a_reader_waits_for_a_lower_position_that_commits_late(db: str) -> None:
    store = PostgresStore(db, horizon_wait=0.3)
    try:
        slow = psycopg.connect(db)
        _raw_insert(slow, "slow-1")  # holds position 1, not committed
        fast = store.append(placed(1))  # position 2, committed
        assert fast[0].position == 2
        start = time.monotonic()
        assert store.read_all() == []  # 2 is committed, but 1 may still commit: wait
        assert time.monotonic() - start >= 0.3
        start = time.monotonic()
        assert store.read_all() == []  # the same stuck writer: no second wait
        assert time.monotonic() - start < 0.25
        slow.commit()
        assert [r.event.id for r in store.read_all()] == ["slow-1", fast[0].event.id]
        # a rolled-back position is a hole for good: the reader moves past it
        _raw_insert(slow, "rolled-back")
        late = store.append(placed(1))
        assert store.read_all(after_position=2) == []
        slow.rollback()
        slow.close()
        assert [r.event.id for r in store.read_all(after_position=2)] == [late[0].event.id]
    finally:
        store.close()


def test_an_external_writer_with_another_search_path_is_fenced(db: str, session_db: str) -> None:
    schema = db.rsplit("%3D", 1)[1]
    store = PostgresStore(db)
    try:
        with psycopg.connect(session_db) as ext:  # search_path "public": no events table there
            ext.execute(
                f'INSERT INTO "{schema}".events (id, type, source, time, payload) VALUES '
                "('ext-1', 'ext.event', 'x', now(), "
                '\'{"specversion":"1.0","id":"ext-1","source":"x","type":"ext.event"}\')'
            )
            fence = _sql(
                db,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 29801 "
                "AND objid = 'events'::regclass::oid AND mode = 'ShareLock'",
            )
            assert fence == [(1,)]
            ext.commit()
        assert [r.event.id for r in store.read_all()] == ["ext-1"]
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_eight_writers_with_rollbacks_and_slow_commits_a_paging_reader_sees_each_once(
    db: str,
) -> None:
    store = PostgresStore(db, pool_size=12)
    committed: set[str] = set()
    rolled_back: set[str] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(w: int) -> None:
        rnd = random.Random(w)
        try:
            with psycopg.connect(db) as conn:
                for i in range(60):
                    kind = i % 4
                    if kind in (0, 1):  # through the store: single events and batches
                        evs = placed(1 if kind == 0 else rnd.randint(2, 20))
                        store.append(evs, stream=f"gap-{w}" if kind == 1 else None)
                        with lock:
                            committed.update(e.id for e in evs)
                    else:  # raw transactions held open a moment, then committed or rolled back
                        ids = [f"w{w}-{i}-{k}" for k in range(rnd.randint(1, 3))]
                        for eid in ids:
                            _raw_insert(conn, eid)
                        time.sleep(rnd.random() * 0.004)
                        if kind == 2:
                            conn.rollback()
                            with lock:
                                rolled_back.update(ids)
                        else:
                            conn.commit()
                            with lock:
                                committed.update(ids)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    seen: list[Recorded] = []

    def reader() -> None:
        after = 0
        try:
            while True:
                finished = done.is_set()
                page = store.read_all(after_position=after, limit=37)
                for rec in page:
                    assert rec.position > after
                    after = rec.position
                seen.extend(page)
                if not page and finished:
                    return
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        read_thread = threading.Thread(target=reader)
        read_thread.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        read_thread.join(30)
        assert not errors, errors
        ids = [r.event.id for r in seen]
        assert len(ids) == len(set(ids)), "an event was seen twice"
        assert set(ids) == committed, (
            f"missed {len(committed - set(ids))}, extra {len(set(ids) - committed)}"
        )
        assert not set(ids) & rolled_back
        assert rolled_back, "the test must roll some transactions back"
        positions = [r.position for r in seen]
        assert positions == sorted(positions)
    finally:
        store.close()


# --------------------------------------------------------------------- LISTEN and subscriptions


@pytest.mark.timeout(60)
def test_subscription_loses_nothing_when_its_listen_connection_is_killed(db: str) -> None:
    # Polling is slowed to 30 s: only LISTEN (and the reconnect's catch-up) can deliver in time.
    subscriber = PostgresStore(db, poll_interval=30.0, ping_interval=0.5)
    writer = PostgresStore(db)
    got: list[Recorded] = []
    appended: list[Recorded] = []
    sub = subscriber.subscribe(Criteria(), got.append, name="killed", poll_interval=30.0)
    try:
        listener = subscriber.listener
        assert listener is not None and listener.ready.is_set()
        first_pid = listener.backend_pid

        def append_stream() -> None:
            for i in range(120):
                appended.extend(writer.append(placed(1 + i % 3)))
                time.sleep(0.003)

        t = threading.Thread(target=append_stream)
        t.start()
        wait_until(lambda: len(got) >= 30, what="events before the kill")
        killed = _sql(db, "SELECT pg_terminate_backend(%s)", (first_pid,))
        assert killed == [(True,)]
        t.join()
        wait_until(lambda: len(got) >= len(appended), timeout=15, what="every event after the kill")
        time.sleep(0.1)
        assert [r.event.id for r in got] == [r.event.id for r in appended]
        assert listener.connects >= 2 and listener.backend_pid != first_pid
        wait_until(lambda: sub.position == appended[-1].position, what="checkpoint")
    finally:
        sub.stop()
        subscriber.close()
        writer.close()


def test_live_wakeup_comes_from_listen_not_polling(db: str) -> None:
    subscriber = PostgresStore(db, poll_interval=30.0)
    writer = PostgresStore(db)
    got: list[Recorded] = []
    sub = subscriber.subscribe(Criteria(), got.append, name="live", poll_interval=30.0)
    try:
        time.sleep(0.2)
        start = time.monotonic()
        recs = writer.append(placed(3))
        wait_until(lambda: len(got) == 3, timeout=5, what="live events")
        assert time.monotonic() - start < 2.0
        assert [r.event.id for r in got] == [r.event.id for r in recs]
    finally:
        sub.stop()
        subscriber.close()
        writer.close()


@pytest.mark.timeout(60)
def test_two_instances_of_a_transactional_subscription_apply_each_event_once(db: str) -> None:
    _sql(db, "CREATE TABLE effects (seq serial PRIMARY KEY, id text NOT NULL)")
    writer = PostgresStore(db)
    stores = [PostgresStore(db, poll_interval=0.05) for _ in range(2)]

    def handler(rec: Recorded, conn: Any) -> None:
        conn.execute("INSERT INTO effects (id) VALUES (%s)", (rec.event.id,))

    subs = [
        s.subscribe(Criteria(), handler, name="shared", transactional=True, poll_interval=0.05)
        for s in stores
    ]
    try:
        recs: list[Recorded] = []
        for _ in range(20):
            recs += writer.append(placed(10))
        wait_until(lambda: writer.checkpoint("shared") == recs[-1].position, what="checkpoint")
        time.sleep(0.2)
    finally:
        for sub in subs:
            sub.stop()
        for s in (*stores, writer):
            s.close()
    rows = [r[0] for r in _sql(db, "SELECT id FROM effects ORDER BY seq")]
    assert rows == [r.event.id for r in recs]  # each effect exactly once, in order


def test_one_wakeup_per_transaction_and_seed_trigger_switch(db: str) -> None:
    store = PostgresStore(db)
    try:
        with psycopg.connect(db, autocommit=True) as listen:
            listen.execute(f"LISTEN {CHANNEL}")
            listen.execute(f"LISTEN {SEED_CHANNEL}")
            store.append(placed(100))
            store.append(placed(1))
            notes = list(listen.notifies(timeout=0.5))
            wake = [n for n in notes if n.channel == CHANNEL]
            seed = [n for n in notes if n.channel == SEED_CHANNEL]
            assert len(wake) == 2  # one per transaction, however many rows
            assert len(seed) == 101  # seed 001's trigger: one per row
            set_seed_notify(db, False)
            store.append(placed(50))
            notes = list(listen.notifies(timeout=0.5))
            assert [n.channel for n in notes] == [CHANNEL]
            set_seed_notify(db, True)
            store.append(placed(2))
            notes = list(listen.notifies(timeout=0.5))
            assert sorted(n.channel for n in notes) == [SEED_CHANNEL, SEED_CHANNEL, CHANNEL]
    finally:
        store.close()


# --------------------------------------------------------------------- seed 001's trigger


def test_seed_trigger_and_function_exist(db: str) -> None:
    rows = _sql(
        db,
        "SELECT t.tgname, p.proname, t.tgenabled FROM pg_trigger t "
        "JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = 'events'::regclass "
        "AND t.tgname = 'trigger_notify_new_event'",
    )
    assert rows == [("trigger_notify_new_event", "notify_new_event", "O")]


def _seed_notes(db: str, *events: Event, stream: str | None = None) -> list[dict[str, Any]]:
    store = PostgresStore(db)
    try:
        with psycopg.connect(db, autocommit=True) as listen:
            listen.execute(f"LISTEN {SEED_CHANNEL}")
            recs = store.append(list(events), stream=stream)
            notes = list(listen.notifies(timeout=0.5, stop_after=len(events)))
    finally:
        store.close()
    for note in notes:
        assert len(note.payload.encode()) < 8000
    out = [json.loads(n.payload) for n in notes]
    assert [o["position"] for o in out] == [r.position for r in recs]
    return out


def test_seed_trigger_fires_on_insert_with_the_seed_payload_shape(db: str) -> None:
    ev = Event(
        type="AgentRegistered",
        source="identity",
        data={"agent": 1},
        metadata={"chain_id": 11155111, "block_number": 1000000},
    )
    (note,) = _seed_notes(db, ev, stream="agent-1")
    assert note["event_id"] == ev.id
    assert note["event_type"] == "AgentRegistered"
    assert note["registry"] == "identity"
    assert note["chain_id"] == 11155111 and note["block_number"] == 1000000
    assert note["stream"] == "agent-1" and note["version"] == 1
    assert {"event_id", "chain_id", "block_number", "event_type", "registry"} <= set(note)
    assert "truncated" not in note


def test_seed_trigger_null_fields(db: str) -> None:
    (note,) = _seed_notes(db, Event(type="x.y"))
    assert note["chain_id"] is None and note["block_number"] is None
    assert note["stream"] is None and note["version"] is None


def test_seed_trigger_long_ids_and_special_characters(db: str) -> None:
    long_id = "id-" + "x" * 20_000
    odd = 'quote\' "double" back\\slash \n newline \u00e9\u2713\U0001f600 \x01'
    notes = _seed_notes(
        db,
        Event(type="long.id", id=long_id),
        Event(type="odd.chars", id=odd, source=odd),
        Event(type="odd.unicode", id="\u65e5\u672c" * 3000, source="\U0001f600" * 3000),
    )
    assert notes[0]["truncated"] is True and long_id.startswith(notes[0]["event_id"])
    assert notes[1]["event_id"] == odd and notes[1]["registry"] == odd  # exact round trip
    assert notes[2]["truncated"] is True


def test_seed_trigger_payload_stays_small_for_a_huge_event(db: str) -> None:
    huge = Event(
        type="huge.event",
        id="h-" + "\x01" * 5000,  # each control character becomes 6 bytes of JSON escape
        source="s" * 50_000,
        subject="t" * 50_000,
        data={"blob": "y" * 2_000_000},
        metadata={"chain_id": "c" * 100_000, "block_number": "b" * 100_000},
    )
    (note,) = _seed_notes(db, huge, stream="z" * 50_000)
    assert note["truncated"] is True
    assert note["event_type"] == "huge.event"


# --------------------------------------------------------------------- errors


def test_unreachable_database_fails_fast_naming_host_and_port_without_password() -> None:
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        open_store("postgresql://postgres:s3cret@127.0.0.1:1/nowhere", connect_timeout=2)
    assert time.monotonic() - start < 5
    assert "127.0.0.1:1" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_database_without_schema_says_to_migrate(empty_db: str) -> None:
    with pytest.raises(SchemaMissing, match="tidings migrate"):
        open_store(empty_db)
    store = open_store(empty_db, migrate=True)  # opt-in
    try:
        assert store.append(placed(1))[0].position == 1
    finally:
        store.close()


def test_duplicate_event_id_names_it_and_keeps_the_stream(db: str) -> None:
    store = PostgresStore(db)
    try:
        first = store.append(placed(1), stream="d")
        with pytest.raises(Exception, match=first[0].event.id):
            store.append(first[0].event, stream="d")
        assert store.stream_version("d") == 1
        with pytest.raises(ConcurrencyError):
            store.append(placed(1), stream="d", expected_version=0)
    finally:
        store.close()


# --------------------------------------------------------------------- migrations and schema

EXPECTED_COLUMNS = {
    "txid": ("xid8", "NO"),
    "position": ("bigint", "NO"),
    "id": ("text", "NO"),
    "type": ("text", "NO"),
    "source": ("text", "NO"),
    "stream": ("text", "YES"),
    "version": ("bigint", "YES"),
    "time": ("timestamp with time zone", "NO"),
    "subject": ("text", "YES"),
    "correlation_id": ("text", "YES"),
    "causation_id": ("text", "YES"),
    "aggregate_id": ("text", "YES"),
    "aggregate_type": ("text", "YES"),
    "payload": ("json", "NO"),
    "recorded_at": ("timestamp with time zone", "NO"),
    # 004_chain.sql: seed 001's columns, and invalidation
    "chain_id": ("bigint", "YES"),
    "block_number": ("bigint", "YES"),
    "block_hash": ("text", "YES"),
    "parent_hash": ("text", "YES"),
    "transaction_hash": ("text", "YES"),
    "log_index": ("integer", "YES"),
    "registry": ("text", "YES"),
    "event_type": ("text", "YES"),
    "timestamp": ("bigint", "YES"),
    "created_at": ("timestamp with time zone", "YES"),
    "invalidated": ("boolean", "NO"),
}
EXPECTED_INDEXES = {
    "events_pkey": '("position")',
    "events_id_key": "(id)",
    "events_stream_version_key": "(stream, version)",
    "events_type_position_idx": '(type, "position")',
    "events_correlation_position_idx": '(correlation_id, "position")',
    "events_aggregate_position_idx": '(aggregate_id, "position")',
    "events_time_idx": '("time")',
    "events_chain_block_idx": "(chain_id, block_number) WHERE (chain_id IS NOT NULL)",
    "events_registry_idx": "(registry) WHERE (registry IS NOT NULL)",
}


def _schema(url: str) -> dict[str, Any]:
    return {
        "columns": _sql(
            url,
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
        ),
        "indexes": _sql(
            url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ),
        "triggers": _sql(
            url, "SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1"
        ),
        "functions": _sql(
            url,
            "SELECT proname, md5(prosrc) FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
            "ORDER BY 1",
        ),
    }


def test_migrated_database_matches_the_schema_and_migrating_twice_is_a_no_op(
    empty_db: str,
) -> None:
    applied = migrate(empty_db)
    assert applied == [m.version for m in migrations()]
    assert applied == sorted(applied) and len(applied) >= 3
    cols = _sql(
        empty_db,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'events' ORDER BY ordinal_position",
    )
    assert {c: (t, n) for c, t, n in cols} == EXPECTED_COLUMNS
    assert cols[0][0] == "txid"  # first: its default runs before position's (see 001)
    indexes = dict(
        _sql(empty_db, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events'")
    )
    for name, columns in EXPECTED_INDEXES.items():
        assert name in indexes and f"USING btree {columns}" in indexes[name], (
            name,
            indexes.get(name),
        )
    assert "UNIQUE" in indexes["events_id_key"]
    assert "UNIQUE" in indexes["events_stream_version_key"]
    tables = {
        r[0] for r in _sql(empty_db, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
    }
    assert {"events", "tidings_streams", "tidings_checkpoints", "tidings_migrations"} <= tables
    recorded = [r[0] for r in _sql(empty_db, "SELECT version FROM tidings_migrations ORDER BY 1")]
    assert recorded == applied
    before = _schema(empty_db)
    assert migrate(empty_db) == []
    assert _schema(empty_db) == before


def test_partition_option_on_an_existing_plain_table_is_refused(db: str) -> None:
    with pytest.raises(StoreError, match="plain table"):
        migrate(db, partition="week")
    with pytest.raises(StoreError, match="day, week, month"):
        migrate(db, partition="hour")


def test_two_processes_migrating_at_once_apply_each_file_once(empty_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_db))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    flat = sorted(v for r in results for v in r)
    assert flat == [m.version for m in migrations()]


# --------------------------------------------------------------------- partitions and retention


def test_partitioned_events_append_read_and_retention(empty_db: str) -> None:
    migrate(empty_db, partition="day")
    parts = _sql(
        empty_db,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass ORDER BY 1",
    )
    names = [p[0] for p in parts]
    assert "events_default" in names and len(names) >= 5  # yesterday .. today + 3, default
    newest = sorted(n for n in names if n != "events_default")[-1]
    _sql(empty_db, f"DROP TABLE {newest}")
    store = PostgresStore(empty_db)  # opening creates the upcoming partitions again
    assert _sql(empty_db, "SELECT to_regclass(%s) IS NOT NULL", (newest,)) == [(True,)]
    try:
        recs = store.append(placed(5), stream="p")
        assert [r.version for r in store.load_stream("p")] == [1, 2, 3, 4, 5]
        with pytest.raises(ConcurrencyError):
            store.append(placed(1), stream="p", expected_version=3)
        # an old event in yesterday's partition
        with psycopg.connect(empty_db, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO events (id, type, source, time, payload, recorded_at) VALUES "
                "('old-1', 'old.event', 'test', now(), "
                '\'{"specversion":"1.0","id":"old-1","source":"t","type":"old.event"}\','
                " date_trunc('day', now()) - interval '12 hours')"
            )
        assert len(store.read_all()) == 6
        cut = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        dropped = _sql(empty_db, "SELECT tidings_drop_partitions(%s)", (cut,))
        assert len(dropped) == 1
        left = store.read_all()
        assert [r.event.id for r in left] == [r.event.id for r in recs]
        assert _sql(empty_db, "SELECT tidings_drop_partitions(%s)", (cut,)) == []
        # detach only: the table survives outside events
        future = cut + timedelta(days=30)
        detached = _sql(empty_db, "SELECT tidings_drop_partitions(%s, true)", (future,))
        assert len(detached) >= 4
        assert store.read_all() == []  # every dated partition detached, nothing in default
        assert _sql(empty_db, f"SELECT count(*) FROM {detached[0][0]}") is not None
    finally:
        store.close()
