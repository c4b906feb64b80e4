"""Apply tidings' PostgreSQL migrations to a database URL (the runner is tidings.migrations).

``migrate(url)`` applies the event store's files (``tidings/store/sql/postgres/*.sql``);
``apply_migrations(url)`` every component of the database (store, webhook queue, ...), which is
what ``tidings migrate URL`` does. Each file runs in its own transaction and is recorded in
``tidings_migrations``; a session ``pg_advisory_lock`` keyed on the target schema serialises
concurrent runs: a second process waits, then finds everything applied. ``PostgresStore`` never
migrates on its own unless opened with ``migrate=True``; ``tidings migrate URL`` is the normal way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from tidings.migrations import (
    Migration,
    MigrationError,
    database_components,
    postgres_apply,
    postgres_pending,
)
from tidings.migrations import migrations as component_files
from tidings.store.base import StoreError, StoreUnavailable
from tidings.store.postgres_queries import TEXT, Q

__all__ = [
    "PARTITION_INTERVALS",
    "Migration",
    "apply_migrations",
    "connect",
    "describe",
    "migrate",
    "migrations",
    "pending",
    "set_seed_notify",
]

PARTITION_INTERVALS = ("day", "week", "month")


def migrations() -> list[Migration]:
    """The event store's migrations, in the order they apply (by their numeric prefix)."""
    return list(component_files("store", "postgres"))


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


def pending(url: str, *, connect_timeout: float = 5.0) -> list[str]:
    """The store migrations not applied yet to ``url`` (all of them on an empty database)."""
    with connect(url, connect_timeout=connect_timeout, autocommit=True) as conn:
        try:
            return [m.version for m in postgres_pending(conn, ("store",))]
        except MigrationError as exc:
            raise StoreError(f"PostgreSQL at {describe(url)}: {exc}") from exc


def migrate(
    url: str,
    *,
    partition: str | None = None,
    seed_notify: bool | None = None,
    connect_timeout: float = 5.0,
) -> list[str]:
    """Apply the missing event store migrations to ``url``; return the file names applied
    (empty: up to date).

    ``partition`` ("day" | "week" | "month") creates ``events`` partitioned by ``recorded_at``;
    it only has an effect when the table is created (on a fresh database). ``seed_notify``
    switches seed 001's per-row ``new_event`` trigger on or off (None leaves it as it is; a
    fresh schema ships it on).
    """
    done = apply_migrations(
        url,
        ("store",),
        partition=partition,
        seed_notify=seed_notify,
        connect_timeout=connect_timeout,
    )
    return [m.version for m in done]


def apply_migrations(
    url: str,
    components: Sequence[str] | None = None,
    *,
    schema: str | None = None,
    partition: str | None = None,
    seed_notify: bool | None = None,
    connect_timeout: float = 5.0,
) -> list[Migration]:
    """Apply the missing files of ``components`` (default: every component of the database,
    see ``tidings.migrations.COMPONENTS``) to ``url``; return those applied.

    ``schema`` is for components with a schema of their own (``transport_postgres``).
    ``partition`` and ``seed_notify`` concern the store, as in ``migrate``.
    """
    if partition is not None and partition not in PARTITION_INTERVALS:
        raise StoreError(
            f"partition={partition!r}: expected one of {', '.join(PARTITION_INTERVALS)}"
        )
    names = tuple(database_components() if components is None else components)
    settings = {"tidings.partition": partition} if partition is not None else None
    with connect(url, connect_timeout=connect_timeout, autocommit=True) as conn:
        try:
            applied = postgres_apply(conn, names, schema=schema, settings=settings)
            if "store" in names:
                _after_store(conn, url, partition, seed_notify)
        except (MigrationError, psycopg.Error) as exc:
            raise StoreError(f"migrating PostgreSQL at {describe(url)} failed: {exc}") from exc
    return applied


def _after_store(
    conn: psycopg.Connection[Any], url: str, partition: str | None, seed_notify: bool | None
) -> None:
    """What the store needs after its files, applied or not: the partition check, the coming
    partitions, the seed trigger switch."""
    kind = conn.execute(Q.events_kind)
    if partition is not None and kind.fetchone() != ("p",):
        raise StoreError(
            f"PostgreSQL at {describe(url)}: events already exists as a plain table; "
            "--partition only applies when the table is created (see "
            "docs/store-postgres.md for moving rows into a partitioned table)"
        )
    conn.execute(Q.ensure_partitions).fetchall()
    if seed_notify is not None:
        _set_seed_notify(conn, seed_notify)


def _set_seed_notify(conn: psycopg.Connection[Any], enabled: bool) -> None:
    action = sql.SQL("ENABLE" if enabled else "DISABLE")
    conn.execute(sql.SQL(TEXT.seed_notify).format(action=action))


def set_seed_notify(url: str, enabled: bool, *, connect_timeout: float = 5.0) -> None:
    """Switch seed 001's per-row ``new_event`` trigger on or off (needs the table's owner)."""
    with connect(url, connect_timeout=connect_timeout, autocommit=True) as conn:
        _set_seed_notify(conn, enabled)
