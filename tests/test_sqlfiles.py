"""tidings.sqlfiles: named queries read from .sql files."""

from __future__ import annotations

import pytest

from tidings.sqlfiles import fill, load, marks, parse
from tidings.transports.postgres.queries import statements

TEXT = """\
-- A header comment: documents the file, belongs to no query.

-- name: first
-- What first does (dropped from the text sent to the server).
SELECT 1  -- a trailing comment is SQL and stays
FROM t

-- name: second_one
UPDATE t SET x = ? WHERE {filter}
"""


def test_blocks_become_named_queries_without_their_comment_lines() -> None:
    q = parse(TEXT, "t.sql")
    assert list(q) == ["first", "second_one"]
    assert q.first == "SELECT 1  -- a trailing comment is SQL and stays\nFROM t"
    assert q["second_one"] == "UPDATE t SET x = ? WHERE {filter}"
    assert q.map(str.encode).first == q.first.encode()


def test_an_unknown_name_says_which_exist() -> None:
    q = parse(TEXT, "t.sql")
    with pytest.raises(AttributeError, match=r"t\.sql has no query named 'thrid'; it has first"):
        _ = q.thrid
    with pytest.raises(KeyError, match="thrid"):
        _ = q["thrid"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT 1\n-- name: a\nSELECT 2", r"t.sql:1: SQL before the first"),
        ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2", r"t.sql:3: query 'a' is defined twice"),
        ("-- name: a\n-- only a comment\n-- name: b\nSELECT 1", r"query 'a' .* is empty"),
        ("-- name: Bad-Name\nSELECT 1", r"t.sql:1: query name 'Bad-Name' must be"),
    ],
)
def test_malformed_files_fail_at_load_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(text, "t.sql")


def test_fill_and_marks() -> None:
    template = parse(TEXT).second_one
    assert fill(template, filter="id IN (" + marks(3) + ")") == (
        "UPDATE t SET x = ? WHERE id IN (?, ?, ?)"
    )
    with pytest.raises(KeyError, match="do not match"):
        fill(template, other="x")
    with pytest.raises(ValueError, match=">= 1"):
        marks(0)


def test_the_shipped_files_load() -> None:
    assert "create_table" in load("tidings", "sql/postgres/migrations.sql")
    assert "create_table" in load("tidings", "sql/sqlite/migrations.sql")


@pytest.mark.parametrize("package", ["tidings.webhooks", "tidings.store"])
def test_the_dialect_files_name_their_fragments_alike(package: str) -> None:
    """A composed statement must find every fragment in either dialect's file."""
    sqlite = load(package, "sql/sqlite/queries.sql")
    postgres = load(package, "sql/postgres/queries.sql")
    prefix = "delivery_" if package == "tidings.webhooks" else "event_"
    shared = {"event_after", "event_types", "event_since", "event_until", "event_stream"}
    if package == "tidings.webhooks":
        assert set(sqlite) - {"wal", "event_bodies"} == set(postgres) - {"serialize_existing"}
    else:
        assert shared <= {n for n in sqlite if n.startswith(prefix)}
        assert shared <= {n for n in postgres if n.startswith(prefix)}


def test_the_postgres_transport_statements_quote_their_schema_and_channel() -> None:
    """Rendered once per transport: the schema as an identifier, the NOTIFY channel as a
    literal, the shared fan-out fragment inside both publishes, no slot left unfilled."""
    s = statements("q_schema", "q_channel")
    assert b'FROM "q_schema".deliveries' in s.claim
    assert s.listen == b'LISTEN "q_channel"'
    assert b"pg_notify('q_channel', %s)" in s.notify
    for name in ("publish_one", "publish_batch"):
        assert b'INSERT INTO "q_schema".deliveries' in s[name], name
    assert not [name for name, text in s.items() if b"{schema}" in text or b"{channel}" in text]
    with pytest.raises(AttributeError, match="no query named 'drop_sub'"):
        _ = s.drop_sub
