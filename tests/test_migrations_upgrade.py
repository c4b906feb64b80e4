"""A database made by the previous release, upgraded, has exactly the schema of a fresh install.

The previous release (``PREVIOUS``: main before the one migration track) is taken from this
checkout's git history (``git archive``) and run as it was, in a subprocess with its ``src`` on
PYTHONPATH: it creates the store, the webhook queue and the PostgreSQL transport's tables its own
three ways, and writes a little data. Then today's code upgrades that database twice over, once
through ``tidings migrate`` and once only through the open paths (store, queue, transport start),
and both must equal a fresh install: ``pg_dump --schema-only`` and a pg_catalog summary on
PostgreSQL, ``sqlite_schema`` on SQLite, the same migration records, and the old data kept.

Without the git history (a source tarball) the test skips loudly; with CI set it fails.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import require_service
from tidings.cli import app
from tidings.store import open_store
from tidings.triggers.chains import ChainTracker

PREVIOUS = "081201d"
ROOT = Path(__file__).resolve().parents[1]
HOST, PORT = "127.0.0.1", 5432
BASE = f"postgresql://postgres@{HOST}:{PORT}"
QUEUE_SCHEMA = "tidings_queue"

# What the previous release's users did: each component created its tables its own way.
OLD_POSTGRES = """
import asyncio, sys
import tidings
assert tidings.__file__.startswith(sys.argv[1]), tidings.__file__
from tidings.event import Event
from tidings.store import open_store
from tidings.store.migrate import migrate
from tidings.transports.postgres import PostgresTransport
from tidings.webhooks.queue import DeliveryQueue

async def transport(url):
    t = PostgresTransport(url + "?schema=tidings_queue")
    await t.start()
    await t.publish(Event(type="upgrade.queued", source="tests/upgrade"))
    await t.close()

for url in sys.argv[2:]:
    migrate(url)  # `tidings migrate URL`: the store's numbered files
    store = open_store(url)
    store.append(Event(type="upgrade.kept", source="tests/upgrade"))
    DeliveryQueue(store).close()  # the queue ran webhooks/sql/postgres.sql on open
    store.close()
    asyncio.run(transport(url))  # the transport ran its Python DDL on start
"""
OLD_SQLITE = """
import sys
import tidings
assert tidings.__file__.startswith(sys.argv[1]), tidings.__file__
from tidings.event import Event
from tidings.store import open_store
from tidings.webhooks.queue import DeliveryQueue

for path in sys.argv[2:]:
    store = open_store("sqlite:///" + path)  # applied store/sql/sqlite/*.sql on open
    store.append(Event(type="upgrade.kept", source="tests/upgrade"))
    DeliveryQueue(store).close()  # ran webhooks/sql/sqlite.sql on open
    store.close()
"""


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``src`` of the previous release, extracted from git."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS, "src"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = (
            f"the previous release {PREVIOUS} is not in this checkout's git history "
            f"({exc}; {detail.decode(errors='replace').strip()}); the schema upgrade test "
            "needs a clone with history"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the upgrade test: {reason}", pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {reason}")
    target = tmp_path_factory.mktemp("previous")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def _run_previous(src: Path, script: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(src), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"the previous release failed:\n{done.stdout}\n{done.stderr}"


def _migrate(*args: str) -> str:
    result = CliRunner().invoke(app, ["migrate", *args])
    assert result.exit_code == 0, result.output
    return result.output


# --------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def databases() -> Iterator[Callable[[], str]]:
    require_service("PostgreSQL", HOST, PORT)
    psycopg = pytest.importorskip("psycopg")
    made: list[str] = []

    def make() -> str:
        name = f"tidings_upgrade_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"{BASE}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{BASE}/{name}"

    yield make
    with psycopg.connect(f"{BASE}/postgres", autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(query.encode()).fetchall()]


def _pg_dump(url: str) -> str | None:
    """The schema as pg_dump prints it, minus its comments; None when no usable pg_dump."""
    exe = shutil.which("pg_dump")
    if exe is None:
        print("pg_dump is not installed: comparing the pg_catalog summary only")
        return None
    done = subprocess.run(
        [exe, "--schema-only", "--no-owner", "--no-privileges", "--dbname", url],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0 and "version mismatch" in done.stderr:
        print(f"pg_dump cannot dump this server ({done.stderr.strip()}): catalog summary only")
        return None
    assert done.returncode == 0, done.stderr
    keep = [
        line
        for line in done.stdout.splitlines()
        if line.strip() and not line.startswith(("--", "\\restrict", "\\unrestrict"))
    ]
    return "\n".join(keep)


# What pg_dump would show, read from the catalogs: works without pg_dump, and says per object
# what differs.
CATALOG = {
    "columns": """
        SELECT c.relnamespace::regnamespace::text, c.relname, c.relkind, a.attnum, a.attname,
               format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE c.relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')
          AND c.relnamespace::regnamespace::text NOT LIKE 'pg_toast%'
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2, 4""",
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3""",
    "constraints": """
        SELECT n.nspname, c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, tgenabled, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT p.pronamespace::regnamespace::text, p.proname, pg_get_functiondef(p.oid)
        FROM pg_proc p
        WHERE p.pronamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')
        ORDER BY 1, 2""",
    "sequences": """
        SELECT schemaname, sequencename, data_type, increment_by FROM pg_sequences
        ORDER BY 1, 2""",
}


def _catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {name: _rows(url, query) for name, query in CATALOG.items()}


def _records(url: str) -> list[tuple[Any, ...]]:
    public = _rows(url, "SELECT component, version FROM tidings_migrations ORDER BY 1, 2")
    queue = _rows(
        url, f"SELECT component, version FROM {QUEUE_SCHEMA}.tidings_migrations ORDER BY 1, 2"
    )
    return public + queue


def _diff(expected: str, got: str, what: str) -> str:
    lines = difflib.unified_diff(
        expected.splitlines(), got.splitlines(), "fresh install", what, lineterm=""
    )
    return "\n".join(lines)


async def _start_transport(url: str) -> None:
    from tidings.transports.postgres import PostgresTransport  # noqa: PLC0415

    transport = PostgresTransport(f"{url}?schema={QUEUE_SCHEMA}")
    await transport.start()
    await transport.close()


def _open_everything(url: str) -> None:
    """What an application does at start: open the store, the webhook queue, the transport.

    The PostgreSQL store applies its own files only when asked (``migrate=True``; the SQLite
    store always does): an application that upgrades without ``tidings migrate`` opens so."""
    from tidings.server.keys_db import open_keys  # noqa: PLC0415
    from tidings.webhooks.queue import DeliveryQueue  # noqa: PLC0415

    store = open_store(url, migrate=True)
    try:
        DeliveryQueue(store).close()  # type: ignore[arg-type]
        ChainTracker(store).close()  # the triggers component: chain checkpoints
        open_keys(store)  # tidings serve's API keys (component server) on open
    finally:
        store.close()
    asyncio.run(_start_transport(url))
    _open_outbox(url)
    asyncio.run(_open_triggers(url))


async def _open_triggers(url: str) -> None:
    """What ``tidings serve`` / ``tidings process`` open for triggers: the job queue and the
    results in the store's database (each applies the ``triggers`` component)."""
    from tidings.triggers.jobs import SqlJobQueue  # noqa: PLC0415
    from tidings.triggers.results import ActionResults  # noqa: PLC0415

    await SqlJobQueue(url).close()
    await ActionResults(url).close()


def _open_outbox(url: str) -> None:
    """An application's outbox at start (``Relay(migrate=True)`` / ``schema.apply``)."""
    from tidings.outbox import schema  # noqa: PLC0415

    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            schema.apply(conn)
        finally:
            conn.close()
        return
    import psycopg  # noqa: PLC0415

    with psycopg.connect(url) as pg:
        schema.apply(pg)


def test_postgres_database_of_the_previous_release_upgrades_to_the_fresh_schema(
    previous_release: Path, databases: Callable[[], str]
) -> None:
    pytest.importorskip("psycopg")
    fresh, by_migrate, by_opening = databases(), databases(), databases()
    _run_previous(previous_release, OLD_POSTGRES, by_migrate, by_opening)
    assert _rows(by_migrate, "SELECT count(*) FROM tidings_migrations") == [(3,)]

    _migrate(fresh, "--transport-schema", QUEUE_SCHEMA)
    _open_everything(fresh)
    output = _migrate(by_migrate, "--transport-schema", QUEUE_SCHEMA)
    assert "001_queue.sql (webhooks)" in output and "001_queue.sql (transport_postgres)" in output
    assert "001_events.sql" not in output  # the store's files were applied by the old release
    _open_everything(by_migrate)
    _open_everything(by_opening)  # no `tidings migrate`: the open paths upgrade on their own

    expected_dump = _pg_dump(fresh)
    expected_catalog = _catalog(fresh)
    expected_records = _records(fresh)
    assert ("webhooks", "001_queue.sql") in expected_records
    assert ("transport_postgres", "001_queue.sql") in expected_records
    for url in (by_migrate, by_opening):
        dump = _pg_dump(url)
        if expected_dump is not None and dump is not None:
            assert dump == expected_dump, _diff(expected_dump, dump, url)
        catalog = _catalog(url)
        for part, rows in expected_catalog.items():
            assert catalog[part] == rows, (part, url)
        assert _records(url) == expected_records
        assert _rows(url, "SELECT type FROM events") == [("upgrade.kept",)]
        assert _rows(url, f"SELECT type FROM {QUEUE_SCHEMA}.messages") == [("upgrade.queued",)]
        kept = "SELECT applied_at FROM tidings_migrations WHERE version = '001_events.sql'"
        assert _rows(url, kept)[0][0] is not None


# --------------------------------------------------------------------- SQLite


def _sqlite_schema(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name"
        ).fetchall()


def _sqlite_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


def _open_sqlite(path: Path) -> None:
    from tidings.server.keys_db import open_keys  # noqa: PLC0415
    from tidings.webhooks.queue import DeliveryQueue  # noqa: PLC0415

    store = open_store(f"sqlite:///{path}")
    try:
        DeliveryQueue(store).close()  # type: ignore[arg-type]
        ChainTracker(store).close()  # the triggers component: chain checkpoints
        open_keys(store)  # tidings serve's API keys (component server) on open
    finally:
        store.close()
    _open_outbox(f"sqlite:///{path}")
    asyncio.run(_open_triggers(f"sqlite:///{path}"))


def test_sqlite_database_of_the_previous_release_upgrades_to_the_fresh_schema(
    previous_release: Path, tmp_path: Path
) -> None:
    fresh, by_migrate, by_opening = (tmp_path / f"{n}.db" for n in ("fresh", "mig", "open"))
    _run_previous(previous_release, OLD_SQLITE, str(by_migrate), str(by_opening))
    columns = _sqlite_rows(by_migrate, "SELECT name FROM pragma_table_info('tidings_migrations')")
    assert columns == [("version",), ("applied_at",)]  # the old one-column shape

    _migrate(f"sqlite:///{fresh}")
    _open_sqlite(fresh)
    output = _migrate(f"sqlite:///{by_migrate}")
    assert "applied 001_queue (webhooks)" in output and "001_init" not in output
    _open_sqlite(by_migrate)
    _open_sqlite(by_opening)

    expected = _sqlite_schema(fresh)
    records = "SELECT component, version FROM tidings_migrations ORDER BY 1, 2"
    assert _sqlite_rows(fresh, records) == [
        ("outbox", "001_outbox"),
        ("server", "001_api_keys"),
        ("store", "001_init"),
        ("store", "002_chain"),
        ("triggers", "001_jobs"),
        ("triggers", "002_checkpoints"),
        ("triggers", "003_partitions"),
        ("triggers", "004_saved_triggers"),
        ("triggers", "005_starts"),
        ("webhooks", "001_queue"),
    ]
    for path in (by_migrate, by_opening):
        got = _sqlite_schema(path)
        assert got == expected, "\n".join(
            difflib.unified_diff(
                [repr(r) for r in expected], [repr(r) for r in got], "fresh", str(path)
            )
        )
        assert _sqlite_rows(path, records) == _sqlite_rows(fresh, records)
        assert _sqlite_rows(path, "SELECT type FROM tidings_events") == [("upgrade.kept",)]
