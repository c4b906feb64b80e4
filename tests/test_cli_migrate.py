"""``tidings migrate URL``: applies the schema once, says what it did, fails in one line."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import require_service
from tidings.cli import app

psycopg = pytest.importorskip("psycopg")

HOST, PORT = "127.0.0.1", 5432
BASE = f"postgresql://postgres@{HOST}:{PORT}"
STORE_ROWS = "SELECT count(*) FROM tidings_migrations WHERE component = 'store'"
WEBHOOK_ROWS = "SELECT count(*) FROM tidings_migrations WHERE component = 'webhooks'"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def empty_db() -> Iterator[str]:
    require_service("PostgreSQL", HOST, PORT)
    name = f"tidings_cli_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{BASE}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{BASE}/{name}"
    finally:
        with psycopg.connect(f"{BASE}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _one(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
        return None if row is None else row[0]


def test_migrate_applies_then_is_a_no_op(runner: CliRunner, empty_db: str) -> None:
    first = runner.invoke(app, ["migrate", empty_db])
    assert first.exit_code == 0, first.output
    assert "applied 001_events.sql" in first.output
    assert "applied 002_notify.sql" in first.output
    assert "applied 001_queue.sql (webhooks)" in first.output
    assert _one(empty_db, STORE_ROWS) == 4
    assert _one(empty_db, WEBHOOK_ROWS) == 1
    with_password = empty_db.replace("postgres@", "postgres:topsecret@")  # trust auth ignores it
    second = runner.invoke(app, ["migrate", with_password])
    assert second.exit_code == 0, second.output
    assert "up to date" in second.output and "applied" not in second.output
    assert "topsecret" not in second.output and "postgres:***@" in second.output
    assert _one(empty_db, STORE_ROWS) == 4
    assert _one(empty_db, WEBHOOK_ROWS) == 1


def test_migrate_switches_the_seed_trigger(runner: CliRunner, empty_db: str) -> None:
    sql = "SELECT tgenabled FROM pg_trigger WHERE tgname = 'trigger_notify_new_event'"
    result = runner.invoke(app, ["migrate", empty_db, "--no-seed-notify"])
    assert result.exit_code == 0, result.output
    assert "notify_new_event: off" in result.output
    assert _one(empty_db, sql) == "D"
    result = runner.invoke(app, ["migrate", empty_db, "--seed-notify"])
    assert result.exit_code == 0, result.output
    assert _one(empty_db, sql) == "O"


def test_migrate_partitioned(runner: CliRunner, empty_db: str) -> None:
    result = runner.invoke(app, ["migrate", empty_db, "--partition", "month"])
    assert result.exit_code == 0, result.output
    assert _one(empty_db, "SELECT relkind FROM pg_class WHERE relname = 'events'") == "p"
    bad = runner.invoke(app, ["migrate", empty_db, "--partition", "hour"])
    assert bad.exit_code == 2
    assert "day, week, month" in bad.output


def test_migrate_creates_the_postgres_transport_tables_on_request(
    runner: CliRunner, empty_db: str
) -> None:
    first = runner.invoke(app, ["migrate", empty_db, "--transport-schema", "jobs_queue"])
    assert first.exit_code == 0, first.output
    assert "applied 001_queue.sql (transport_postgres)" in first.output
    assert _one(empty_db, "SELECT to_regclass('jobs_queue.messages') IS NOT NULL") is True
    assert _one(empty_db, "SELECT count(*) FROM jobs_queue.tidings_migrations") == 1
    again = runner.invoke(app, ["migrate", empty_db, "--transport-schema", "jobs_queue"])
    assert again.exit_code == 0 and "up to date" in again.output, again.output
    bad = runner.invoke(app, ["migrate", empty_db, "--transport-schema", "Jobs-Queue"])
    assert bad.exit_code == 2 and "lower-case letters" in bad.output, bad.output


def test_unreachable_database_is_one_clear_line_without_the_password(runner: CliRunner) -> None:
    start = time.monotonic()
    result = runner.invoke(
        app, ["migrate", "postgresql://postgres:hunter2@127.0.0.1:1/nowhere", "--timeout", "2"]
    )
    assert time.monotonic() - start < 5
    assert result.exit_code == 2
    assert "cannot reach PostgreSQL at 127.0.0.1:1/nowhere" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


def test_sqlite_url_and_bad_scheme(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    first = runner.invoke(app, ["migrate", url])
    assert first.exit_code == 0, first.output
    assert "applied" in first.output
    second = runner.invoke(app, ["migrate", url])
    assert second.exit_code == 0 and "up to date" in second.output
    bad = runner.invoke(app, ["migrate", "mysql://db"])
    assert bad.exit_code == 2 and "postgresql://" in bad.output
    wrong = runner.invoke(app, ["migrate", url, "--partition", "day"])
    assert wrong.exit_code == 2 and "PostgreSQL only" in wrong.output
    wrong = runner.invoke(app, ["migrate", url, "--transport-schema", "q"])
    assert wrong.exit_code == 2 and "PostgreSQL only" in wrong.output
