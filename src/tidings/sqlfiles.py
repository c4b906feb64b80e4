"""Named queries in ``.sql`` files, so SQL is read and reviewed as SQL, not as Python strings.

A query file is a run of blocks, each opened by a ``-- name: <identifier>`` line; the block's
text up to the next ``-- name:`` line is the query. Comment lines inside a block document it and
are dropped from the text sent to the server (a ``--`` after code on the same line stays: it is
SQL). A file is read once, when the module that uses it is imported::

    -- name: count_open
    -- Pending + delivering rows, counted up to a cap.
    SELECT count(*) FROM (SELECT 1 FROM tidings_webhook_deliveries ...) AS open_rows

    Q = load("tidings.webhooks", "sql/sqlite/queries.sql")
    conn.execute(Q.count_open, (cap,))

Some queries are templates with ``{name}`` slots for other named fragments of the same file
(an optional filter, a list of ``?`` marks): SQLite fills them with :func:`fill`, PostgreSQL
with ``psycopg.sql.SQL(...).format(...)`` (which also quotes identifiers). Values never go into
the text: they are always parameters. Why not aiosql: it rewrites one placeholder style into
another per driver and has no answer for identifiers or composed filters; this is 100 lines.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Queries", "fill", "load", "marks", "parse"]

T = TypeVar("T")
R = TypeVar("R")

_NAME_LINE = re.compile(r"^--\s*name:\s*(\S*)\s*$")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_SLOT = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class Queries(Mapping[str, T], Generic[T]):
    """The named queries of one file: ``Q.name`` or ``Q["name"]``; read-only."""

    __slots__ = ("_queries", "source")

    def __init__(self, source: str, queries: Mapping[str, T]) -> None:
        self.source = source
        self._queries = dict(queries)

    def __getattr__(self, name: str) -> T:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(
                f"{self.source} has no query named {name!r}; it has {', '.join(self._queries)}"
            ) from None

    def __getitem__(self, name: str) -> T:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"{self.source} has no query named {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)

    def map(self, convert: Callable[[T], R]) -> Queries[R]:
        """The same names with converted texts (bytes for psycopg, say)."""
        return Queries(self.source, {k: convert(v) for k, v in self._queries.items()})

    def __repr__(self) -> str:
        return f"<Queries {self.source}: {', '.join(self._queries)}>"


def parse(text: str, source: str = "<string>") -> Queries[str]:
    """The named queries in ``text``; a ValueError names the line of any malformed block."""
    queries: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []

    def close(line_no: int) -> None:
        if name is None:
            return
        sql = "\n".join(body).strip()
        if not sql:
            raise ValueError(f"{source}: query {name!r} (before line {line_no}) is empty")
        queries[name] = sql

    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        header = _NAME_LINE.match(line.strip())
        if header:
            close(number)
            name, body = header.group(1), []
            if not _IDENTIFIER.match(name):
                raise ValueError(
                    f"{source}:{number}: query name {name!r} must be lower_case_with_underscores"
                )
            if name in queries:
                raise ValueError(f"{source}:{number}: query {name!r} is defined twice")
            continue
        stripped = line.strip()
        if name is None:
            if stripped and not stripped.startswith("--"):
                raise ValueError(f"{source}:{number}: SQL before the first '-- name: <query>' line")
            continue
        if stripped.startswith("--"):
            continue
        body.append(line.rstrip())
    close(len(lines) + 1)
    return Queries(source, queries)


def load(package: str, resource: str) -> Queries[str]:
    """The named queries of ``resource`` (a path inside ``package``), e.g.
    ``load("tidings.store", "sql/sqlite/queries.sql")``."""
    ref = importlib.resources.files(package).joinpath(*resource.split("/"))
    source = f"{package.replace('.', '/')}/{resource}"
    return parse(ref.read_text(encoding="utf-8"), source)


def fill(template: str, **fragments: str) -> str:
    """``template`` with each ``{slot}`` replaced by a fragment (SQL text of a named query or
    ``marks``, never a value); a missing or unused fragment is a bug and raises."""
    slots = set(_SLOT.findall(template))
    if slots != set(fragments):
        raise KeyError(f"template slots {sorted(slots)} do not match {sorted(fragments)}")
    return _SLOT.sub(lambda m: fragments[m.group(1)], template)


def marks(count: int) -> str:
    """``?, ?, ?``: the placeholders of a SQLite ``IN (...)`` list of ``count`` values."""
    if count < 1:
        raise ValueError(f"marks(count): expected >= 1, got {count}")
    return ", ".join("?" * count)
