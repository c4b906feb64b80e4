"""Query parameters of the HTTP API: declared once per route, checked, parsed, documented.

Each route lists the parameters it takes as ``Param`` s; the same list refuses anything else
(``?limt=5`` is a 400 naming ``limt`` and the parameters the route takes, not a silent default),
parses the values with errors that name the parameter, and becomes the route's ``parameters``
in ``/openapi.json``. Values are untrusted: a repeated single parameter, a control character or
an over-long value is refused before any of it reaches a query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import HTTPConnection

from tidings.server.body import ApiError

__all__ = ["CURSOR", "LIMIT", "MAX_VALUE", "Param", "Query"]

_INTEGER = re.compile(r"-?[0-9]+")
MAX_VALUE = 1024  # characters in one query value: more is not a name, pattern or id


@dataclass(frozen=True, slots=True)
class Param:
    """One query parameter: its name, JSON schema, what it means, and whether it repeats."""

    name: str
    schema: dict[str, Any]
    description: str
    multi: bool = False
    example: Any = field(default=None, compare=False)

    def openapi(self) -> dict[str, Any]:
        schema = {"type": "array", "items": self.schema} if self.multi else self.schema
        out: dict[str, Any] = {
            "name": self.name,
            "in": "query",
            "required": False,
            "description": self.description,
            "schema": schema,
        }
        if self.multi:
            out["style"], out["explode"] = "form", True
        if self.example is not None:
            out["example"] = self.example
        return out


LIMIT = Param(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "Items per page (1..1000).",
)
CURSOR = Param(
    "cursor",
    {"type": "string", "maxLength": MAX_VALUE},
    "Where the page starts: `next_cursor` of the previous page, as it was given (opaque).",
)


def _bad_char(value: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value)


class Query:
    """A request's query parameters, checked against what its route declares."""

    def __init__(self, request: HTTPConnection, params: tuple[Param, ...]) -> None:
        self.declared = {p.name: p for p in params}
        self._values: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            if name not in self.declared:
                takes = ", ".join(sorted(self.declared)) or "no query parameters"
                raise ApiError(
                    400,
                    f"{name}: unknown query parameter; {request.url.path} takes: {takes}",
                    name,
                )
            if len(value) > MAX_VALUE or _bad_char(value):
                raise ApiError(
                    400,
                    f"{name}: expected at most {MAX_VALUE} printable characters",
                    name,
                )
            self._values.setdefault(name, []).append(value)
        for name, values in self._values.items():
            if len(values) > 1 and not self.declared[name].multi:
                raise ApiError(400, f"{name}: given {len(values)} times; give it once", name)

    def filters(self) -> str:
        """Every parameter but ``cursor`` and ``limit``, canonical: a cursor is bound to them."""
        items = sorted(
            (k, v) for k, vs in self._values.items() if k not in ("cursor", "limit") for v in vs
        )
        return "&".join(f"{k}={v}" for k, v in items)

    def text(self, name: str) -> str | None:
        values = self._values.get(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for v in self._values.get(name, []) if v]

    def integer(self, name: str, default: int, lo: int = 0, hi: int = 10_000) -> int:
        value = self.text(name)
        if value is None:
            return default
        # int() also takes " 7", "1_000" and other scripts' digits ("٢"): only 0-9 here
        if not _INTEGER.fullmatch(value):
            raise ApiError(400, f"{name}: expected a whole number, got {value!r}", name)
        number = int(value)
        if not lo <= number <= hi:
            raise ApiError(400, f"{name}: expected {lo}..{hi}, got {number}", name)
        return number

    def limit(self) -> int:
        return self.integer("limit", 100, 1, 1000)

    def time(self, name: str) -> datetime | None:
        return parse_time(self.text(name), name)

    def choice(self, name: str, options: tuple[str, ...]) -> str | None:
        value = self.text(name)
        if value is not None and value not in options:
            raise ApiError(400, f"{name}: expected one of {', '.join(options)}", name)
        return value


def parse_time(value: Any, name: str) -> datetime | None:
    """An RFC 3339 / ISO 8601 time (UTC when it names no zone), or a 400 naming ``name``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name}: expected an ISO 8601 time like 2026-01-15T10:30:00Z", name)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, f"{name}: expected an ISO 8601 time like 2026-01-15T10:30:00Z", name
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
