"""The store contract against real SQLite files, plus what only SQLite has."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.contract.store_contract import OrderPlaced, StoreContract, placed, wait_until
from tidings.store import (
    Criteria,
    Recorded,
    SchemaMissing,
    StoreError,
    StoreUnavailable,
    open_store,
)
from tidings.store.sqlite import migrate, path_of

ROOT = Path(__file__).resolve().parents[2]


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/events.db"

    def tx_prepare(self, store_url: str) -> None:
        with sqlite3.connect(path_of(store_url)) as conn:
            conn.execute("CREATE TABLE tx_effects (event_id TEXT PRIMARY KEY)")

    def tx_write(self, conn: Any, rec: Recorded) -> None:
        conn.execute("INSERT INTO tx_effects (event_id) VALUES (?)", (rec.event.id,))

    def tx_rows(self, store_url: str) -> list[str]:
        with sqlite3.connect(path_of(store_url)) as conn:
            return [r[0] for r in conn.execute("SELECT event_id FROM tx_effects ORDER BY rowid")]


def test_urls_relative_and_absolute_like_sqlalchemy() -> None:
    assert path_of("sqlite:///events.db") == "events.db"
    assert path_of("sqlite:///data/events.db") == "data/events.db"
    assert path_of("sqlite:////var/lib/events.db") == "/var/lib/events.db"
    for bad in ("sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite://host/x.db"):
        with pytest.raises(StoreError, match="sqlite:///"):
            path_of(bad)


def test_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///rel.db")
    try:
        store.append(placed(1))
    finally:
        store.close()
    assert (tmp_path / "rel.db").exists()


def test_a_path_that_cannot_be_opened_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "events.db"
    with pytest.raises(StoreUnavailable, match=str(missing)):
        open_store(f"sqlite:///{missing}")
    not_db = tmp_path / "notes.txt"
    not_db.write_text("this is not a database " * 100)
    with pytest.raises(StoreUnavailable, match=r"notes\.txt"):
        open_store(f"sqlite:///{not_db}")


def test_unknown_url_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="colour"):
        open_store(f"sqlite:///{tmp_path}/e.db?colour=blue")
    with pytest.raises(ValueError, match="synchronous"):
        open_store(f"sqlite:///{tmp_path}/e.db", synchronous="SOMETIMES")


def test_appends_are_fully_synchronous_by_default(tmp_path: Path) -> None:
    """FULL by default: an acknowledged append survives a power cut; NORMAL only on request."""
    default = open_store(f"sqlite:///{tmp_path}/full.db")
    relaxed = open_store(f"sqlite:///{tmp_path}/normal.db?synchronous=normal")
    try:
        # PRAGMA synchronous reads back 2 for FULL and 1 for NORMAL, per connection.
        assert default._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # type: ignore[attr-defined]
        assert relaxed._writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # type: ignore[attr-defined]
    finally:
        default.close()
        relaxed.close()


def test_schema_is_applied_once_and_recorded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    store = open_store(url, synchronous="NORMAL")
    store.close()
    with sqlite3.connect(tmp_path / "fresh.db") as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM tidings_migrations")]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert versions == ["001_init", "002_chain"]
    assert {"tidings_events", "tidings_checkpoints", "tidings_migrations"} <= tables
    assert mode == "wal"
    assert migrate(url) == []  # a no-op the second time
    open_store(url).close()
    with sqlite3.connect(tmp_path / "fresh.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM tidings_migrations").fetchone()[0] == 2


def test_without_auto_migration_a_bare_database_says_what_to_run(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "bare.db").close()
    url = f"sqlite:///{tmp_path}/bare.db"
    with pytest.raises(SchemaMissing, match="tidings migrate"):
        open_store(url, migrate=False)
    assert migrate(url) == ["001_init", "002_chain"]
    open_store(url, migrate=False).close()


def test_a_dropped_table_is_reported_as_missing_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/e.db"
    store = open_store(url)
    try:
        with sqlite3.connect(tmp_path / "e.db") as conn:
            conn.execute("DROP TABLE tidings_events")
        with pytest.raises(SchemaMissing, match="tidings migrate"):
            store.append(placed(1))
    finally:
        store.close()


def test_the_stored_row_is_cloudevents_json_with_indexed_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/e.db"
    store = open_store(url)
    ev = OrderPlaced(order_id="o1", amount=2.5, correlation_id="c", aggregate_id="a")
    try:
        store.append(ev, stream="order-o1")
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "e.db") as conn:
        row = conn.execute(
            "SELECT id, type, stream, version, correlation_id, aggregate_id, "
            "json_extract(body, '$.specversion'), json_extract(body, '$.data.amount') "
            "FROM tidings_events"
        ).fetchone()
    assert row == (ev.id, "storetest.order.placed", "order-o1", 1, "c", "a", "1.0", 2.5)


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/e.db")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.append(placed(1))
    with pytest.raises(StoreError, match="closed"):
        store.read_all()


_CHILD = textwrap.dedent(
    """
    import sys, time
    from tidings.event import Event
    from tidings.store import open_store
    store = open_store(sys.argv[1])
    for i in range(int(sys.argv[2])):
        store.append(Event(type="storetest.child", data={"i": i}), stream="child")
        time.sleep(0.005)
    store.close()
    """
)


@pytest.mark.timeout(60)
def test_another_processs_appends_reach_a_subscription_by_polling(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    store = open_store(url)
    got: list[Recorded] = []
    sub = store.subscribe(
        Criteria(types=("storetest.child",)), got.append, name="x-proc", poll_interval=0.02
    )
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, url, "40"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: len(got) == 40, what="40 events from the child process")
        assert time.monotonic() - started < 30
    finally:
        sub.stop()
    assert [r.event.data["i"] for r in got] == list(range(40))
    assert [r.version for r in got] == list(range(1, 41))
    assert store.checkpoint("x-proc") == got[-1].position
    store.close()


@pytest.mark.timeout(60)
def test_two_processes_append_to_one_stream_without_forking_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    open_store(url).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, url, "50"], cwd=ROOT, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    store = open_store(url)
    try:
        assert [r.version for r in store.load_stream("child")] == list(range(1, 101))
        positions = [r.position for r in store.read_all(limit=1000)]
        assert positions == sorted(positions) and len(positions) == 100
    finally:
        store.close()
