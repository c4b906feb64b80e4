"""Fixtures of the outbox tests: a fresh PostgreSQL database or SQLite file with the outbox
table, a recording target, and a wait that says what it saw when it gives up."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import require_service
from tidings.event import Event
from tidings.outbox import schema

HOST, PORT = "127.0.0.1", 5432
BASE = f"postgresql://postgres@{HOST}:{PORT}"


def admin(sql: str) -> None:
    with psycopg.connect(f"{BASE}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def create_database(prefix: str = "tidings_outbox") -> str:
    require_service("PostgreSQL", HOST, PORT)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin(f'CREATE DATABASE "{name}"')
    url = f"{BASE}/{name}"
    with psycopg.connect(url) as conn:
        schema.apply(conn)
        conn.execute("CREATE TABLE links (id text PRIMARY KEY, amount numeric NOT NULL)")
        conn.commit()
    return url


def drop_database(url: str) -> None:
    admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database with the outbox table and a business table ``links``."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def create_sqlite(path: Path) -> str:
    url = f"sqlite:///{path}"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    schema.apply(conn)
    conn.execute("CREATE TABLE links (id TEXT PRIMARY KEY, amount REAL NOT NULL)")
    conn.commit()
    conn.close()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return create_sqlite(tmp_path / "app.db")


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield create_sqlite(tmp_path / "app.db")
        return
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def connect(url: str) -> Any:
    """The application's own connection (a transaction begins with the first statement)."""
    if url.startswith("sqlite"):
        return sqlite3.connect(url.removeprefix("sqlite:///"), timeout=10)
    return psycopg.connect(url)


class Recorder:
    """A relay target that keeps what it was given, in the order it was given, thread-safe."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.by: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
            self.by.append(threading.current_thread().name)

    def ids(self) -> list[str]:
        with self.lock:
            return [e.id for e in self.events]

    def __len__(self) -> int:
        with self.lock:
            return len(self.events)


def wait_until(
    condition: Callable[[], bool], timeout: float, what: Callable[[], str] | str
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            seen = what() if callable(what) else what
            raise AssertionError(f"gave up after {timeout}s waiting: {seen}")
        time.sleep(0.01)


def rows(url: str, sql: str = "SELECT count(*) FROM tidings_outbox") -> Any:
    conn = connect(url)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
