"""The PostgreSQL transport's statements: the named queries of ``sql/postgres/queries.sql``,
read once at import and rendered once per transport for its schema and channel.

The schema (and the channel where it is LISTENed to) is filled in with
``psycopg.sql.Identifier``, the NOTIFY channel with ``psycopg.sql.Literal``; values are always
parameters. Every call sends the rendered bytes, so publishing and claiming compose nothing.
"""

from __future__ import annotations

from typing import TypeAlias

from psycopg import sql

from tidings import sqlfiles

__all__ = ["Statements", "statements"]

_QUERIES = sqlfiles.load("tidings.transports.postgres", "sql/postgres/queries.sql")

# Fragments other queries are built from, not statements of their own.
_FRAGMENTS = ("fan_out",)

Statements: TypeAlias = sqlfiles.Queries[bytes]


def statements(schema: str, channel: str) -> Statements:
    """Every statement for one schema and channel (validated by the options parser, quoted
    here), by name: ``statements(...).claim``."""
    slots: dict[str, sql.Composable] = {
        "schema": sql.Identifier(schema),
        "channel": sql.Literal(channel),
        "listen_channel": sql.Identifier(channel),
    }
    for name in _FRAGMENTS:
        slots[name] = sql.SQL(_QUERIES[name]).format(**slots)
    return sqlfiles.Queries(
        _QUERIES.source,
        {
            name: sql.SQL(text).format(**slots).as_bytes(None)
            for name, text in _QUERIES.items()
            if name not in _FRAGMENTS
        },
    )
