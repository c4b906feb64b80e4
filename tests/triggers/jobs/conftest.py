"""Fixtures of the triggers' job tests: the job queue on a SQLite file, a fresh PostgreSQL schema
and a Redis prefix of its own, and the results beside it in the same database."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service
from tidings.triggers.jobs import JobQueue, SqlJobQueue
from tidings.triggers.results import ActionResults

HOST = "127.0.0.1"
PG_PORT, REDIS_PORT = 5432, 6379
BASE = f"postgresql://postgres@{HOST}:{PG_PORT}"


def pg_sql(url: str, sql: str) -> list[tuple[Any, ...]]:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.encode())
        return cur.fetchall() if cur.description else []


@pytest.fixture(scope="session")
def triggers_pg_database() -> Iterator[str]:
    require_service("PostgreSQL", HOST, PG_PORT)
    name = f"tidings_triggers_{uuid.uuid4().hex[:12]}"
    pg_sql(f"{BASE}/postgres", f'CREATE DATABASE "{name}"')
    try:
        yield f"{BASE}/{name}"
    finally:
        pg_sql(f"{BASE}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(triggers_pg_database: str) -> Iterator[str]:
    """A fresh schema with the store's tables, selected through the URL's search_path."""
    migrate = pytest.importorskip("tidings.store.migrate").migrate
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pg_sql(triggers_pg_database, f'CREATE SCHEMA "{schema}"')
    url = f"{triggers_pg_database}?options=-csearch_path%3D{schema}"
    migrate(url)
    try:
        yield url
    finally:
        pg_sql(triggers_pg_database, f"SET lock_timeout = '10s'; DROP SCHEMA \"{schema}\" CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def redis_url() -> str:
    require_service("Redis", HOST, REDIS_PORT)
    pytest.importorskip("redis")
    return f"redis://{HOST}:{REDIS_PORT}/0?prefix=tidings-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(queue, store URL): what ``open_job_queue`` takes."""
    if request.param == "sqlite":
        return "store", f"sqlite:///{tmp_path / 'events.db'}"
    if request.param == "postgres":
        return "store", str(request.getfixturevalue("pg_url"))
    return redis_url(), f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
async def queue(queue_url: tuple[str, str]) -> AsyncIterator[JobQueue]:
    from tidings.triggers.jobs import open_job_queue  # noqa: PLC0415

    q = open_job_queue(*queue_url)
    try:
        yield q
    finally:
        if not isinstance(q, SqlJobQueue):
            await q.drop()  # type: ignore[attr-defined]
        await q.close()


@pytest.fixture
async def results(queue_url: tuple[str, str]) -> AsyncIterator[ActionResults]:
    r = ActionResults(queue_url[1])
    try:
        yield r
    finally:
        await r.close()


async def wait_for(condition: Callable[[], Any], timeout: float, what: Callable[[], Any]) -> None:
    """Await ``condition()`` (sync or async) until true; on timeout fail saying ``what()``."""
    import inspect  # noqa: PLC0415

    import anyio  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            seen = what()
            if inspect.isawaitable(seen):
                seen = await seen
            raise AssertionError(f"gave up after {timeout}s waiting; saw {seen}")
        await anyio.sleep(0.02)
