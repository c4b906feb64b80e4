"""The PostgreSQL store's statements: the named queries of ``sql/postgres/queries.sql``, the
filters of a ``Criteria`` composed from their fragments, and the rows that go in and out."""

from __future__ import annotations

import dataclasses
import functools
import math
from datetime import datetime
from typing import Any

from psycopg import sql

from tidings import sqlfiles
from tidings.event import Event, encode
from tidings.store.base import Criteria, Recorded, read_body
from tidings.store.chain import chain_values

__all__ = [
    "COPY_TYPES",
    "TEXT",
    "Q",
    "collect",
    "count_query",
    "event_rows",
    "fill_rows",
    "page_query",
    "record",
    "recorded",
    "single_insert",
    "unlimited",
]

TEXT = sqlfiles.load("tidings.store", "sql/postgres/queries.sql")
Q = TEXT.map(str.encode)  # bytes: what psycopg sends, with no conversion per call

COPY_TYPES = [
    "int8", "text", "text", "text", "text", "int8", "timestamptz",
    "text", "text", "text", "text", "text", "bytea",
    "int8", "int8", "text", "text", "text", "int4", "text", "text", "int8",
]  # fmt: skip
PAGE = 1000  # rows per round trip when a load has no limit or filters in Python too


def record(row: tuple[Any, ...]) -> Recorded:
    event, undecodable = read_body(row[4], row[0])
    return Recorded(row[0], event, row[1], row[2], row[3], row[5] or undecodable)


def like_prefix(pattern: str) -> str | None:
    """A LIKE prefix that every name matching the glob ``pattern`` starts with (None: any)."""
    literal = pattern.split("*", 1)[0]
    if not literal:
        return None
    escaped = literal.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def where(
    criteria: Criteria, after: int, horizon: int
) -> tuple[tuple[str, ...], int, list[Any], bool]:
    """The ``event_*`` conditions for ``criteria`` between ``after`` and ``horizon``, how many
    patterns go into ``event_type_like_any``, the parameters, and whether to filter in Python
    too."""
    names = ["after", "up_to"]
    params: list[Any] = [after, horizon]
    if not criteria.include_invalidated:
        names.append("valid")
    likes = 0
    exact = criteria.exact_types
    post_filter = False
    if criteria.types:
        if exact is not None:
            names.append("types")
            params.append(list(exact))
        else:
            post_filter = True
            prefixes = [like_prefix(t) for t in criteria.types]
            if all(p is not None for p in prefixes):
                names.append("type_like_any")
                likes = len(prefixes)
                params += prefixes
    for name, value in (
        ("since", criteria.since),
        ("until", criteria.until),
        ("correlation_id", criteria.correlation_id),
        ("aggregate_id", criteria.aggregate_id),
        ("stream", criteria.stream),
    ):
        if value is not None:
            names.append(name)
            params.append(value)
    return tuple(names), likes, params, post_filter


@functools.lru_cache(maxsize=256)
def compose(template: str, names: tuple[str, ...], likes: int) -> bytes:
    """``template`` (events_page, events_count) with those conditions, composed once."""
    parts: list[sql.Composable] = []
    for name in names:
        fragment = sql.SQL(TEXT[f"event_{name}"])
        if name == "type_like_any":
            alternatives = sql.SQL(" OR ").join([sql.SQL(TEXT.event_type_like)] * likes)
            parts.append(fragment.format(alternatives=alternatives))
        else:
            parts.append(fragment)
    query = sql.SQL(TEXT[template]).format(conditions=sql.SQL(" AND ").join(parts))
    return query.as_bytes(None)


def event_rows(batch: list[Event], stream: str | None) -> list[list[Any]]:
    # encode() and chain_values() raise EventError for a bad event: before anything is written
    return [
        [
            None,
            e.id,
            e.type,
            e.source,
            stream,
            None,
            e.time,
            e.subject,
            e.correlation_id,
            e.causation_id,
            e.aggregate_id,
            e.aggregate_type,
            encode(e),
            *chain_values(e),
            e.type,  # event_type: seed 001's name for it
            math.floor(e.time.timestamp()),  # "timestamp": seed 001's epoch seconds
        ]
        for e in batch
    ]


def single_insert(
    row: list[Any], stream: str | None, expected: int | None
) -> tuple[bytes, list[Any]]:
    if stream is None:
        return Q.insert_plain, [*row[1:4], *row[6:]]
    return Q.insert_one, [*row[1:5], *row[6:], stream, expected]


def fill_rows(rows: list[list[Any]], positions: list[int], first: int | None) -> None:
    for i, row in enumerate(rows):
        row[0] = positions[i]
        if first is not None:
            row[5] = first + i


def recorded(
    batch: list[Event], rows: list[list[Any]], stream: str | None, at: datetime
) -> list[Recorded]:
    return [Recorded(row[0], e, stream, row[5], at) for e, row in zip(batch, rows, strict=True)]


def page_query(criteria: Criteria, after: int, horizon: int) -> tuple[bytes, list[Any], bool]:
    names, likes, params, post = where(criteria, after, horizon)
    page = PAGE if post or criteria.limit is None else criteria.limit
    params.append(page)
    return compose("events_page", names, likes), params, post


def collect(
    rows: list[tuple[Any, ...]], criteria: Criteria, post: bool, out: list[Recorded]
) -> bool:
    """Append matching rows to ``out``; True when the load is complete."""
    for row in rows:
        rec = record(row)
        if post and not criteria.matches(rec):
            continue
        out.append(rec)
        if criteria.limit is not None and len(out) >= criteria.limit:
            return True
    page = PAGE if post or criteria.limit is None else criteria.limit
    return len(rows) < page or (not post and criteria.limit is not None)


def count_query(criteria: Criteria, horizon: int) -> tuple[bytes, list[Any]] | None:
    """``count(*)`` of ``criteria`` up to ``horizon``; None when patterns need a Python filter."""
    names, likes, params, post = where(criteria, criteria.after_position, horizon)
    return None if post else (compose("events_count", names, likes), params)


def unlimited(criteria: Criteria) -> Criteria:
    """``criteria`` without its limit."""
    return dataclasses.replace(criteria, limit=None)
