"""tidings.migrations: one runner, numbered files per component, one table of records.

Components made up for a test live in a throwaway package under tmp_path, registered in
COMPONENTS for that test only. The upgrade from the previous release's schema is
tests/test_migrations_upgrade.py.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service
from tidings import migrations
from tidings.migrations import (
    Component,
    MigrationError,
    sqlite_apply,
    sqlite_pending,
)

HOST, PORT = "127.0.0.1", 5432
BASE = f"postgresql://postgres@{HOST}:{PORT}"

# The records table exactly as releases up to 081201d created it (store/sqlite.py, migrate.py).
LEGACY_SQLITE = (
    "CREATE TABLE IF NOT EXISTS tidings_migrations "
    "(version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
)
LEGACY_POSTGRES = (
    "CREATE TABLE IF NOT EXISTS tidings_migrations ("
    " version text PRIMARY KEY,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)

MakeComponent = Callable[..., str]


@pytest.fixture
def make_component(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MakeComponent:
    """``make_component({"sqlite/001_a.sql": "..."}, in_schema=False)`` -> a registered name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(files: dict[str, str], *, in_schema: bool = False) -> str:
        name = f"fx_{uuid.uuid4().hex[:10]}"
        root = tmp_path / name
        (root / "sql").mkdir(parents=True)
        (root / "__init__.py").write_text("")
        for rel, text in files.items():
            path = root / "sql" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        comp = Component(name, name, in_schema=in_schema)
        monkeypatch.setattr(migrations, "COMPONENTS", (*migrations.COMPONENTS, comp))
        return name

    return make


def _sqlite(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def _schema_sql(conn: sqlite3.Connection, name: str) -> str:
    row = conn.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (name,)).fetchone()
    return str(row[0])


# --------------------------------------------------------------------- files


def test_files_must_be_numbered_without_gaps(make_component: MakeComponent) -> None:
    name = make_component({"sqlite/001_a.sql": "SELECT 1;", "sqlite/003_c.sql": "SELECT 1;"})
    with pytest.raises(MigrationError, match=r"without gaps or repeats; found 001_a\.sql, 003_c"):
        migrations.migrations(name, "sqlite")


def test_components_are_known_by_name_and_scope() -> None:
    with pytest.raises(MigrationError, match="unknown migration component 'nope'; known: store"):
        migrations.component("nope")
    assert migrations.database_components()[0] == "store"
    assert [m.version for m in migrations.migrations("store", "sqlite")] == [
        "001_init",
        "002_chain",
    ]
    assert migrations.migrations("store", "postgres")[0].version == "001_events.sql"


# --------------------------------------------------------------------- SQLite


def test_sqlite_records_component_version_and_time(tmp_path: Path) -> None:
    conn = _sqlite(tmp_path / "a.db")
    applied = sqlite_apply(conn, ["store"])
    assert [(m.component, m.version) for m in applied] == [
        ("store", "001_init"),
        ("store", "002_chain"),
    ]
    rows = conn.execute("SELECT component, version, applied_at FROM tidings_migrations").fetchall()
    assert [r[:2] for r in rows] == [("store", "001_init"), ("store", "002_chain")]
    assert rows[0][2].endswith("Z") and len(rows[0][2]) == len("2025-01-01T00:00:00.000000Z")
    assert sqlite_apply(conn, ["store"]) == []
    assert sqlite_pending(conn, ["store"]) == []


def test_sqlite_table_of_an_earlier_release_is_rebuilt_keeping_its_rows(
    tmp_path: Path, make_component: MakeComponent
) -> None:
    old = _sqlite(tmp_path / "old.db")
    old.execute(LEGACY_SQLITE)
    for statement in migrations._statements(migrations.migrations("store", "sqlite")[0]):
        old.execute(statement)
    old.execute("INSERT INTO tidings_migrations VALUES ('001_init', '2024-05-01T10:00:00.000000Z')")
    # read as component 'store': only the files after 001 are pending, nothing rebuilt
    assert [m.version for m in sqlite_pending(old, ["store"])] == ["002_chain"]
    assert "component" not in _schema_sql(old, "tidings_migrations")

    extra = make_component({"sqlite/001_extra.sql": "CREATE TABLE extra (x INTEGER);"})
    assert [m.version for m in sqlite_apply(old, ["store", extra])] == ["002_chain", "001_extra"]
    rows = old.execute("SELECT * FROM tidings_migrations ORDER BY version").fetchall()
    assert rows[0][:2] == (extra, "001_extra")
    assert rows[1] == ("store", "001_init", "2024-05-01T10:00:00.000000Z")

    fresh = _sqlite(tmp_path / "fresh.db")
    sqlite_apply(fresh, ["store", extra])
    tables = "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name"
    assert old.execute(tables).fetchall() == fresh.execute(tables).fetchall()


def test_sqlite_a_failing_file_leaves_nothing_behind(
    tmp_path: Path, make_component: MakeComponent
) -> None:
    name = make_component(
        {
            "sqlite/001_a.sql": "CREATE TABLE a (x INTEGER);",
            "sqlite/002_b.sql": "CREATE TABLE b (x INTEGER);\nINSERT INTO nowhere VALUES (1);",
        }
    )
    conn = _sqlite(tmp_path / "f.db")
    with pytest.raises(MigrationError, match=f"{name} migration 002_b.sql failed: no such table"):
        sqlite_apply(conn, [name])
    assert not conn.in_transaction
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema")}
    assert "a" in names and "b" not in names
    versions = [r[0] for r in conn.execute("SELECT version FROM tidings_migrations")]
    assert versions == ["001_a"]
    assert [m.file for m in sqlite_pending(conn, [name])] == ["002_b.sql"]


def test_sqlite_processes_racing_apply_each_file_once(
    tmp_path: Path, make_component: MakeComponent
) -> None:
    """Files need not be idempotent: the record is re-read inside BEGIN IMMEDIATE."""
    name = make_component(
        {
            "sqlite/001_t.sql": "CREATE TABLE t (x INTEGER);\nINSERT INTO t VALUES (1);",
            "sqlite/002_u.sql": "CREATE TABLE u (x INTEGER);",
        }
    )
    path = tmp_path / "race.db"
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        conn = _sqlite(path)
        conn.execute("PRAGMA busy_timeout = 10000")
        try:
            barrier.wait()
            results.append([m.file for m in sqlite_apply(conn, [name])])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [], errors
    assert sorted(f for r in results for f in r) == ["001_t.sql", "002_u.sql"], results
    assert _sqlite(path).execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_statements_keep_triggers_whole(make_component: MakeComponent, tmp_path: Path) -> None:
    name = make_component(
        {
            "sqlite/001_trig.sql": (
                "-- a comment\nCREATE TABLE t (x INTEGER);\nCREATE TABLE log (x INTEGER);\n"
                "CREATE TRIGGER t_log AFTER INSERT ON t BEGIN\n"
                "    INSERT INTO log VALUES (new.x);\nEND;\n-- trailing comment\n"
            )
        }
    )
    conn = _sqlite(tmp_path / "t.db")
    sqlite_apply(conn, [name])
    conn.execute("INSERT INTO t VALUES (7)")
    assert conn.execute("SELECT x FROM log").fetchall() == [(7,)]


# --------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_db() -> Iterator[str]:
    require_service("PostgreSQL", HOST, PORT)
    psycopg = pytest.importorskip("psycopg")
    name = f"tidings_mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{BASE}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{BASE}/{name}"
    finally:
        with psycopg.connect(f"{BASE}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg(url: str) -> Any:
    psycopg = pytest.importorskip("psycopg")
    return psycopg.connect(url, autocommit=True)


def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with _pg(url) as conn:
        return list(conn.execute(query).fetchall())


def test_postgres_table_of_an_earlier_release_is_rebuilt_keeping_its_rows(
    pg_db: str, make_component: MakeComponent
) -> None:
    extra = make_component({"postgres/001_extra.sql": "CREATE TABLE extra (x int);"})
    with _pg(pg_db) as conn:
        conn.execute(LEGACY_POSTGRES)
        conn.execute(
            "INSERT INTO tidings_migrations VALUES "
            "('001_events.sql', '2024-05-01 10:00+00'), ('002_notify.sql', now())"
        )
        pending = migrations.postgres_pending(conn, ["store"])
        # legacy rows read as store
        assert [m.file for m in pending] == ["003_partitions.sql", "004_chain.sql"]
        assert [m.file for m in migrations.postgres_apply(conn, [extra])] == ["001_extra.sql"]
    rows = _rows(pg_db, "SELECT component, version, applied_at FROM tidings_migrations ORDER BY 2")
    assert [r[:2] for r in rows] == [
        ("store", "001_events.sql"),
        (extra, "001_extra.sql"),
        ("store", "002_notify.sql"),
    ]
    assert str(rows[0][2].year) == "2024"  # applied_at kept
    constraints = _rows(
        pg_db,
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'tidings_migrations'::regclass",
    )
    assert constraints == [("tidings_migrations_pkey", "PRIMARY KEY (component, version)")]
    assert _rows(pg_db, "SELECT to_regclass('tidings_migrations_v1')") == [(None,)]


def test_postgres_a_failing_file_is_rolled_back_and_the_lock_released(
    pg_db: str, make_component: MakeComponent
) -> None:
    name = make_component(
        {
            "postgres/001_a.sql": "CREATE TABLE a (x int);",
            "postgres/002_b.sql": "CREATE TABLE b (x int);\nINSERT INTO nowhere VALUES (1);",
        }
    )
    with _pg(pg_db) as conn:
        with pytest.raises(MigrationError, match=f"{name} migration 002_b.sql failed: .*nowhere"):
            migrations.postgres_apply(conn, [name])
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 29802"
        ).fetchone()
        assert held == (0,)
    assert _rows(pg_db, "SELECT to_regclass('a') IS NOT NULL, to_regclass('b')") == [(True, None)]
    assert _rows(pg_db, "SELECT version FROM tidings_migrations") == [("001_a.sql",)]


def test_postgres_component_with_a_schema_records_in_that_schema(
    pg_db: str, make_component: MakeComponent
) -> None:
    """Its tables and its record go together: DROP SCHEMA CASCADE, and the next run rebuilds."""
    name = make_component(
        {
            "postgres/001_q.sql": "CREATE TABLE {schema}.q (id bigserial PRIMARY KEY);",
            "postgres/002_r.sql": "ALTER TABLE {schema}.q ADD COLUMN r text;",
        },
        in_schema=True,
    )
    with _pg(pg_db) as conn:
        with pytest.raises(MigrationError, match="needs schema="):
            migrations.postgres_apply(conn, [name])
        with pytest.raises(MigrationError, match="lower-case letters"):
            migrations.postgres_apply(conn, [name], schema="Bad-Name")
        with pytest.raises(MigrationError, match="takes no schema="):
            migrations.postgres_apply(conn, ["store"], schema="qs")
        for _ in range(2):
            applied = migrations.postgres_apply(conn, [name], schema="qs")
            assert [m.file for m in applied] == ["001_q.sql", "002_r.sql"]
            assert migrations.postgres_apply(conn, [name], schema="qs") == []
            recorded = conn.execute("SELECT component, version FROM qs.tidings_migrations")
            assert sorted(recorded) == [(name, "001_q.sql"), (name, "002_r.sql")]
            assert conn.execute("SELECT r FROM qs.q").fetchall() == []
            conn.execute("DROP SCHEMA qs CASCADE")
        assert conn.execute("SELECT to_regclass('public.tidings_migrations')").fetchone() == (None,)
