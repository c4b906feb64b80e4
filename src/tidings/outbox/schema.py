"""The outbox table's DDL: the shipped migration files, and helpers to apply them.

The files are ``tidings/outbox/sql/<postgres|sqlite>/NNN_name.sql``, the layout every tidings
component uses, so ``tidings migrate`` applies them with the rest. An application that manages
its schema with Alembic creates the table from its own migration instead::

    from tidings.outbox import schema

    def upgrade() -> None:
        schema.upgrade(op)

    def downgrade() -> None:
        schema.downgrade(op)

Every statement is idempotent, so a table created by Alembic and a later ``tidings migrate``
(or the other way round) never clash.
"""

from __future__ import annotations

import importlib.resources
import re
import sqlite3
from typing import Any

from tidings.migrations import postgres_apply, sqlite_apply

__all__ = ["apply", "ddl", "downgrade", "files", "statements", "upgrade"]

_FOLDERS = {"postgresql": "postgres", "postgres": "postgres", "sqlite": "sqlite"}
_NAME = re.compile(r"^\d{3}_[a-z0-9_]+\.sql$")
_DROP = {
    "postgres": "DROP TABLE IF EXISTS tidings_outbox;\n"
    "DROP FUNCTION IF EXISTS tidings_outbox_wakeup();\n"
    "DROP FUNCTION IF EXISTS tidings_outbox_reject(text);",
    "sqlite": "DROP TABLE IF EXISTS tidings_outbox;",
}


def _folder(dialect: str) -> str:
    try:
        return _FOLDERS[dialect.lower()]
    except KeyError:
        raise ValueError(
            f"outbox schema: dialect {dialect!r} is not supported; expected postgresql or sqlite"
        ) from None


def files(dialect: str) -> list[tuple[str, str]]:
    """``(file name, SQL)`` of every migration of ``dialect``, in the order they apply."""
    root = importlib.resources.files("tidings.outbox").joinpath("sql", _folder(dialect))
    found = [(p.name, p.read_text("utf-8")) for p in root.iterdir() if _NAME.match(p.name)]
    return sorted(found)


def ddl(dialect: str) -> str:
    """All of ``dialect``'s outbox DDL as one script (for review, or to paste into a migration)."""
    return "\n".join(sql for _, sql in files(dialect))


def statements(dialect: str) -> list[str]:
    """The DDL as single statements, for drivers that run one at a time (SQLite).

    PostgreSQL's script holds function bodies with semicolons, so it is returned whole: one
    ``execute`` runs it.
    """
    if _folder(dialect) == "postgres":
        return [ddl(dialect)]
    out = []
    for _, sql in files(dialect):
        text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
        out += [s.strip() for s in text.split(";") if s.strip()]
    return out


def upgrade(op: Any) -> None:
    """Create the outbox table from an Alembic migration: ``schema.upgrade(op)``."""
    for sql in statements(op.get_bind().dialect.name):
        op.execute(_text(sql))


def downgrade(op: Any) -> None:
    """Drop the outbox table (and its functions) from an Alembic migration."""
    for sql in _DROP[_folder(op.get_bind().dialect.name)].split(";\n"):
        op.execute(_text(sql.rstrip(";")))


def _text(sql: str) -> Any:
    from sqlalchemy import text  # noqa: PLC0415 - only Alembic users have SQLAlchemy

    # Escape colons so text() binds nothing inside the DDL (none is meant as a parameter).
    return text(sql.replace(":", r"\:"))


def apply(conn: Any) -> None:
    """Create or upgrade the outbox table on a psycopg or sqlite3 connection: the ``outbox``
    component of ``tidings migrate``, recorded in ``tidings_migrations`` the same way, so
    an application may call this, run ``tidings migrate``, or both."""
    if isinstance(conn, sqlite3.Connection):
        level = conn.isolation_level
        if conn.in_transaction:
            conn.commit()
        conn.isolation_level = None
        try:
            sqlite_apply(conn, ("outbox",))
        finally:
            conn.isolation_level = level
        return
    autocommit = conn.autocommit
    if not autocommit:
        conn.commit()
        conn.autocommit = True
    try:
        postgres_apply(conn, ("outbox",))
    finally:
        if not autocommit:
            conn.autocommit = False
