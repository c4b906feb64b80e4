"""Apply the shipped PostgreSQL schema (``tidings/store/sql/postgres/*.sql``) in order.

Each file runs in its own transaction and is recorded in ``tidings_migrations``; files already
recorded are skipped, so migrating twice is a no-op. A session-level ``pg_advisory_lock`` keyed
on the target schema serialises concurrent runs: a second process waits, then finds everything
applied. ``PostgresStore`` never migrates on its own unless opened with ``migrate=True``;
``tidings migrate URL`` is the normal way.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from tidings.store.base import StoreError, StoreUnavailable

__all__ = [
    "PARTITION_INTERVALS",
    "Migration",
    "connect",
    "describe",
    "migrate",
    "migrations",
    "pending",
    "set_seed_notify",
]

PARTITION_INTERVALS = ("day", "week", "month")
_LOCK_CLASS = 29802  # advisory lock namespace for migrations ("tidings" + 1)
_NAME_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str  # the file name, e.g. "001_events.sql"
    sql: str


def migrations() -> list[Migration]:
    """The shipped migrations, in the order they apply (by their numeric prefix)."""
    root = importlib.resources.files("tidings.store").joinpath("sql", "postgres")
    found = [
        Migration(entry.name, entry.read_text(encoding="utf-8"))
        for entry in root.iterdir()
        if _NAME_RE.match(entry.name)
    ]
    return sorted(found, key=lambda m: m.version)


def describe(url: str) -> str:
    """``host:port/dbname`` of ``url`` for messages: never the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable PostgreSQL URL>"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    db = str(params.get("dbname") or params.get("user") or "")
    return f"{host}:{port}/{db}"


def connect(url: str, *, connect_timeout: float = 5.0, **kwargs: Any) -> psycopg.Connection[Any]:
    """A psycopg connection, or StoreUnavailable naming host:port (password redacted)."""
    try:
        return psycopg.connect(url, connect_timeout=max(1, round(connect_timeout)), **kwargs)
    except psycopg.OperationalError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        reason = _redact(reason, url) or type(exc).__name__
        raise StoreUnavailable(
            f"cannot reach PostgreSQL at {describe(url)}: {reason}; "
            "check that the server runs and the URL (host, port, user, database) is right"
        ) from None
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"invalid PostgreSQL URL for {describe(url)}: {exc}") from None


def _redact(text: str, url: str) -> str:
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        return text
    return text.replace(str(password), "***") if password else text


def _applied(conn: psycopg.Connection[Any]) -> set[str]:
    row = conn.execute("SELECT to_regclass('tidings_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return set()
    return {r[0] for r in conn.execute("SELECT version FROM tidings_migrations")}


def pending(url: str, *, connect_timeout: float = 5.0) -> list[str]:
    """The migrations not applied yet to ``url`` (all of them on an empty database)."""
    with connect(url, connect_timeout=connect_timeout, autocommit=True) as conn:
        applied = _applied(conn)
    return [m.version for m in migrations() if m.version not in applied]


def migrate(
    url: str,
    *,
    partition: str | None = None,
    seed_notify: bool | None = None,
    connect_timeout: float = 5.0,
) -> list[str]:
    """Apply the missing migrations to ``url``; return the names applied (empty: up to date).

    ``partition`` ("day" | "week" | "month") creates ``events`` partitioned by ``recorded_at``;
    it only has an effect when the table is created (on a fresh database). ``seed_notify``
    switches seed 001's per-row ``new_event`` trigger on or off (None leaves it as it is; a
    fresh schema ships it on).
    """
    if partition is not None and partition not in PARTITION_INTERVALS:
        raise StoreError(
            f"partition={partition!r}: expected one of {', '.join(PARTITION_INTERVALS)}"
        )
    applied_now: list[str] = []
    with connect(url, connect_timeout=connect_timeout, autocommit=True) as conn:
        key = conn.execute("SELECT hashtext(current_schema())").fetchone()
        if key is None or conn.execute("SELECT current_schema()").fetchone() == (None,):
            raise StoreError(
                f"PostgreSQL at {describe(url)}: no schema to create tables in "
                "(search_path names no existing schema)"
            )
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (_LOCK_CLASS, key[0]))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS tidings_migrations ("
                " version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = _applied(conn)
            for m in migrations():
                if m.version in done:
                    continue
                with conn.transaction():
                    if partition is not None:
                        conn.execute(
                            "SELECT set_config('tidings.partition', %s, true)", (partition,)
                        )
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO tidings_migrations (version) VALUES (%s)", (m.version,)
                    )
                applied_now.append(m.version)
            kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass")
            if partition is not None and kind.fetchone() != ("p",):
                raise StoreError(
                    f"PostgreSQL at {describe(url)}: events already exists as a plain table; "
                    "--partition only applies when the table is created (see "
                    "docs/store-postgres.md for moving rows into a partitioned table)"
                )
            conn.execute("SELECT count(*) FROM tidings_ensure_partitions()")
            if seed_notify is not None:
                _set_seed_notify(conn, seed_notify)
        except psycopg.Error as exc:
            raise StoreError(f"migrating PostgreSQL at {describe(url)} failed: {exc}") from exc
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_CLASS, key[0]))
    return applied_now


def _set_seed_notify(conn: psycopg.Connection[Any], enabled: bool) -> None:
    action = sql.SQL("ENABLE" if enabled else "DISABLE")
    conn.execute(sql.SQL("ALTER TABLE events {} TRIGGER trigger_notify_new_event").format(action))


def set_seed_notify(url: str, enabled: bool, *, connect_timeout: float = 5.0) -> None:
    """Switch seed 001's per-row ``new_event`` trigger on or off (needs the table's owner)."""
    with connect(url, connect_timeout=connect_timeout, autocommit=True) as conn:
        _set_seed_notify(conn, enabled)
