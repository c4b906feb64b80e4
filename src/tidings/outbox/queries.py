"""The outbox's named queries, read from ``queries/<dialect>.sql`` once.

A file holds blocks headed ``-- name: NAME``; each block's SQL runs through the driver's own
parameter style (``%(name)s`` for psycopg, ``:name`` for sqlite3). ``named(dialect, name)``
gives the ``:name`` form every SQLAlchemy ``text()`` accepts, whatever the driver.
"""

from __future__ import annotations

import functools
import importlib.resources
import re

__all__ = ["DIALECTS", "named", "query"]

DIALECTS = ("postgresql", "sqlite")
_FILES = {"postgresql": "postgres.sql", "sqlite": "sqlite.sql"}
_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PYFORMAT = re.compile(r"%\((\w+)\)s")


@functools.cache
def _load(dialect: str) -> dict[str, str]:
    text = (
        importlib.resources.files("tidings.outbox")
        .joinpath("queries", _FILES[dialect])
        .read_text("utf-8")
    )
    parts = _HEADER.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        out[name] = "\n".join(lines).strip()
    return out


def query(dialect: str, name: str) -> str:
    """The SQL of query ``name`` in the driver's parameter style."""
    return _load(dialect)[name]


@functools.cache
def named(dialect: str, name: str) -> str:
    """The SQL of query ``name`` with ``:name`` parameters (SQLAlchemy ``text()``)."""
    return _PYFORMAT.sub(r":\1", query(dialect, name))
