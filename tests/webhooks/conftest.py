"""Fixtures for the webhook tests: a durable store on a temp SQLite file or a fresh PostgreSQL
schema (one database per session, one schema per test, as in tests/contract/test_store_postgres)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service
from tidings.store import EventStore, open_store

HOST, PORT = "127.0.0.1", 5432
BASE = f"postgresql://postgres@{HOST}:{PORT}"


def pg_sql(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection; its rows, if any."""
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.encode(), params)
        return cur.fetchall() if cur.description else []


@pytest.fixture(scope="session")
def webhooks_pg_database() -> Iterator[str]:
    require_service("PostgreSQL", HOST, PORT)
    pytest.importorskip("psycopg")
    name = f"tidings_test_{uuid.uuid4().hex[:12]}"
    pg_sql(f"{BASE}/postgres", f'CREATE DATABASE "{name}"')
    try:
        yield f"{BASE}/{name}"
    finally:
        pg_sql(f"{BASE}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(webhooks_pg_database: str) -> Iterator[str]:
    """A fresh migrated schema, selected through the URL's search_path; dropped afterwards."""
    migrate = pytest.importorskip("tidings.store.migrate").migrate
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pg_sql(webhooks_pg_database, f'CREATE SCHEMA "{schema}"')
    url = f"{webhooks_pg_database}?options=-csearch_path%3D{schema}"
    migrate(url)
    try:
        yield url
    finally:
        pg_sql(webhooks_pg_database, f"SET lock_timeout = '10s'; DROP SCHEMA \"{schema}\" CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[EventStore]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()
