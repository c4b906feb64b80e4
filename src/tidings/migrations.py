"""One migration track for every table tidings creates: numbered ``.sql`` files per component.

A component (the event store, the webhook queue, the PostgreSQL transport, ...) keeps its files
in ``<package>/sql/<dialect>/NNN_name.sql`` (dialect ``postgres`` or ``sqlite``), numbered from
001 without gaps; a file, once released, is never edited: a change is a new file. The runner
applies the missing files of the components asked for, in number order, each in its own
transaction, and records each in ``tidings_migrations (component, version, applied_at)``:

- PostgreSQL: under a session ``pg_advisory_lock(29802, hashtext(<schema>))``, so processes
  migrating at once queue up and the later ones find nothing to do.
- SQLite: each file inside ``BEGIN IMMEDIATE`` (SQLite's one-writer lock), re-checking the
  record inside it, so two processes never apply a file twice.

``version`` is the file name on PostgreSQL (``001_events.sql``) and its stem on SQLite
(``001_init``), as each recorded it before components existed; the one-column table of earlier
releases is rebuilt into this shape, its rows becoming component ``store``.

Most components live in the connection's current schema and record there. A component with a
schema of its own (``in_schema``: the PostgreSQL transport's ``?schema=``) writes ``{schema}``
in its files (filled with ``psycopg.sql.Identifier``) and records in that schema's own
``tidings_migrations``: ``DROP SCHEMA ... CASCADE`` then removes the tables and their record
together, and the next start creates both again, as before.

Who applies what: ``tidings migrate URL`` every component of the database (and a transport's
schema with ``--transport-schema``); the SQLite store on open; ``PostgresStore(migrate=True)``;
the webhook queue on open; the PostgreSQL transport on ``start()``. See docs/migrations.md.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from tidings.sqlfiles import load as load_queries

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = [
    "COMPONENTS",
    "Component",
    "Dialect",
    "Migration",
    "MigrationError",
    "component",
    "database_components",
    "migrations",
    "postgres_apply",
    "postgres_pending",
    "sqlite_apply",
    "sqlite_pending",
]

Dialect = Literal["postgres", "sqlite"]


@dataclass(frozen=True, slots=True)
class Component:
    """A named migration sequence: ``<package>/sql/<dialect>/NNN_name.sql``."""

    name: str
    package: str
    in_schema: bool = False  # files say {schema}; applied and recorded per schema (see above)


# Every component, in the order `tidings migrate` applies them (later ones may refer to
# earlier ones' tables). A new one: its files, then one line here; see docs/migrations.md.
COMPONENTS: tuple[Component, ...] = (
    Component("store", "tidings.store"),
    Component("webhooks", "tidings.webhooks"),
    Component("outbox", "tidings.outbox"),
    Component("triggers", "tidings.triggers"),
    Component("transport_postgres", "tidings.transports.postgres", in_schema=True),
)

_FILE_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(Exception):
    """Applying or reading migrations failed; the driver's error is ``__cause__``."""


@dataclass(frozen=True, slots=True)
class Migration:
    component: str
    dialect: Dialect
    file: str  # "001_events.sql"
    sql: str

    @property
    def number(self) -> int:
        return int(self.file[:3])

    @property
    def version(self) -> str:
        """What ``tidings_migrations.version`` records for this file (see the module doc)."""
        return self.file if self.dialect == "postgres" else self.file.removesuffix(".sql")


def component(name: str) -> Component:
    for c in COMPONENTS:
        if c.name == name:
            return c
    raise MigrationError(
        f"unknown migration component {name!r}; known: {', '.join(c.name for c in COMPONENTS)}"
    )


def database_components() -> tuple[str, ...]:
    """The components that live in the store's database schema (all but per-schema ones)."""
    return tuple(c.name for c in COMPONENTS if not c.in_schema)


@functools.cache
def migrations(name: str, dialect: Dialect) -> tuple[Migration, ...]:
    """The files of component ``name`` for ``dialect``, in order (read once per process)."""
    comp = component(name)
    folder = importlib.resources.files(comp.package).joinpath("sql", dialect)
    if not folder.is_dir():
        return ()
    found = sorted(
        (
            Migration(name, dialect, entry.name, entry.read_text(encoding="utf-8"))
            for entry in folder.iterdir()
            if _FILE_RE.match(entry.name)
        ),
        key=lambda m: m.file,
    )
    numbers = [m.number for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise MigrationError(
            f"{comp.package}/sql/{dialect}: migration files must be numbered 001, 002, ... "
            f"without gaps or repeats; found {', '.join(m.file for m in found)}"
        )
    return tuple(found)


def _wanted(names: Iterable[str], dialect: Dialect) -> list[Migration]:
    return [m for name in names for m in migrations(name, dialect)]


def _check_scope(names: Sequence[str], schema: str | None) -> None:
    if schema is not None and not _SCHEMA_RE.match(schema):
        raise MigrationError(
            f"schema {schema!r}: expected lower-case letters, digits and underscores, starting "
            "with a letter or underscore (at most 63 characters)"
        )
    for name in names:
        if component(name).in_schema != (schema is not None):
            need = "needs schema=" if component(name).in_schema else "takes no schema="
            raise MigrationError(f"migration component {name!r} {need}")


# ---------------------------------------------------------------------- PostgreSQL

_PG = load_queries("tidings", "sql/postgres/migrations.sql")
_PGB = _PG.map(str.encode)  # the statements without identifiers, as psycopg sends them


def _pg(name: str, schema: str) -> sql.Composed:
    from psycopg import sql  # noqa: PLC0415 - psycopg is the optional "postgres" extra

    return sql.SQL(_PG[name]).format(schema=sql.Identifier(schema))


def _pg_target(conn: psycopg.Connection[Any], schema: str | None) -> str:
    if schema is not None:
        return schema
    row = conn.execute(_PGB.current_schema).fetchone()
    if row is None or row[0] is None:
        raise MigrationError("no schema to create tables in (search_path names no existing schema)")
    return str(row[0])


def _pg_applied(conn: psycopg.Connection[Any], target: str) -> set[tuple[str, str]]:
    columns = {r[0] for r in conn.execute(_PGB.table_columns, (target,))}
    if not columns:
        return set()
    query = "applied" if "component" in columns else "applied_legacy"
    return {(r[0], r[1]) for r in conn.execute(_pg(query, target))}


def postgres_pending(
    conn: psycopg.Connection[Any], names: Sequence[str], *, schema: str | None = None
) -> list[Migration]:
    """The files of ``names`` not applied yet; reads only (no lock, no DDL)."""
    import psycopg  # noqa: PLC0415

    _check_scope(names, schema)
    try:
        target = _pg_target(conn, schema)
        done = _pg_applied(conn, target)
    except psycopg.Error as exc:
        raise MigrationError(f"cannot read tidings_migrations: {exc}") from exc
    return [m for m in _wanted(names, "postgres") if (m.component, m.version) not in done]


def postgres_apply(
    conn: psycopg.Connection[Any],
    names: Sequence[str],
    *,
    schema: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> list[Migration]:
    """Apply the missing files of ``names`` on ``conn`` (autocommit); return those applied.

    ``schema``: the schema of ``in_schema`` components (created if missing). ``settings``:
    ``set_config`` values each file's transaction sees (``tidings.partition``).
    """
    import psycopg  # noqa: PLC0415

    if not postgres_pending(conn, names, schema=schema):
        return []  # the common case on open: no lock taken, no DDL run
    target = _pg_target(conn, schema)
    applied: list[Migration] = []
    current: Migration | None = None
    try:
        conn.execute(_PGB.lock, (target,))
        try:
            with conn.transaction():
                if schema is not None:
                    exists = conn.execute(_PGB.schema_exists, (schema,)).fetchone()
                    if not (exists and exists[0]):
                        conn.execute(_pg("create_schema", schema))
                _pg_table(conn, target)
            done = _pg_applied(conn, target)
            for current in _wanted(names, "postgres"):
                if (current.component, current.version) in done:
                    continue
                with conn.transaction():
                    for key, value in (settings or {}).items():
                        conn.execute(_PGB.set_local, (key, value))
                    conn.execute(_file_sql(current, schema))
                    conn.execute(_pg("record", target), (current.component, current.version))
                applied.append(current)
        finally:
            if not conn.closed:
                conn.execute(_PGB.unlock, (target,))
    except psycopg.Error as exc:
        what = f"{current.component} migration {current.file}" if current else "tidings_migrations"
        raise MigrationError(f"{what} failed: {exc}") from exc
    return applied


def _pg_table(conn: psycopg.Connection[Any], target: str) -> None:
    """Create tidings_migrations, or rebuild an earlier release's one into today's shape."""
    columns = {r[0] for r in conn.execute(_PGB.table_columns, (target,))}
    if "component" in columns:
        return
    legacy = bool(columns)
    if legacy:
        conn.execute(_pg("rename_legacy_table", target))
    conn.execute(_pg("create_table", target))
    if legacy:
        conn.execute(_pg("copy_legacy_rows", target))
        conn.execute(_pg("drop_legacy_table", target))


def _file_sql(m: Migration, schema: str | None) -> sql.Composed | bytes:
    if schema is None:
        return m.sql.encode()
    from psycopg import sql  # noqa: PLC0415

    return sql.SQL(m.sql).format(schema=sql.Identifier(schema))


# ---------------------------------------------------------------------- SQLite

_SQLITE = load_queries("tidings", "sql/sqlite/migrations.sql")


def _sqlite_applied(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    columns = {r[0] for r in conn.execute(_SQLITE.table_columns)}
    if not columns:
        return set()
    query = _SQLITE.applied if "component" in columns else _SQLITE.applied_legacy
    return {(r[0], r[1]) for r in conn.execute(query)}


def sqlite_pending(conn: sqlite3.Connection, names: Sequence[str]) -> list[Migration]:
    """The files of ``names`` not applied yet; reads only."""
    _check_scope(names, None)
    done = _sqlite_applied(conn)
    return [m for m in _wanted(names, "sqlite") if (m.component, m.version) not in done]


def sqlite_apply(conn: sqlite3.Connection, names: Sequence[str]) -> list[Migration]:
    """Apply the missing files of ``names`` on ``conn`` (``isolation_level=None``), each in
    its own ``BEGIN IMMEDIATE`` transaction; return those applied."""
    applied: list[Migration] = []
    for m in sqlite_pending(conn, names):
        try:
            conn.execute("BEGIN IMMEDIATE")
            _sqlite_table(conn)
            if (m.component, m.version) in _sqlite_applied(conn):  # another process was first
                conn.execute("COMMIT")
                continue
            for statement in _statements(m):
                conn.execute(statement)
            stamp = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
            conn.execute(_SQLITE.record, (m.component, m.version, stamp + "Z"))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise MigrationError(f"{m.component} migration {m.file} failed: {exc}") from exc
            raise
        applied.append(m)
    return applied


def _sqlite_table(conn: sqlite3.Connection) -> None:
    columns = {r[0] for r in conn.execute(_SQLITE.table_columns)}
    if "component" in columns:
        return
    legacy = bool(columns)
    if legacy:
        conn.execute(_SQLITE.rename_legacy_table)
    conn.execute(_SQLITE.create_table)
    if legacy:
        conn.execute(_SQLITE.copy_legacy_rows)
        conn.execute(_SQLITE.drop_legacy_table)


def _statements(m: Migration) -> list[str]:
    """The statements of a file, one per ``execute`` (``executescript`` would COMMIT first)."""
    out: list[str] = []
    buffer = ""
    for line in m.sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer.strip())
            buffer = ""
    rest = "".join(
        line for line in buffer.splitlines() if line.strip() and not line.strip().startswith("--")
    )
    if rest:
        raise MigrationError(f"{m.component} migration {m.file}: unterminated statement {rest!r}")
    return out
