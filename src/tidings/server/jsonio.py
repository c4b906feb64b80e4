"""JSON answers and the small conversions every route shares: a reply, an object body, times.

Times leave the API as RFC 3339 in UTC with milliseconds (``2026-01-15T10:30:00.123Z``), the
form the rest of the API reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tidings.server.body import ApiError, json_body

__all__ = ["json_object", "reply", "rfc3339"]

_json = msgspec.json.Encoder()


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(data), status, headers=headers, media_type="application/json")


async def json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body, which must be a JSON object (``{}`` when there is none)."""
    data = await json_body(request, limit)
    if not isinstance(data, dict):
        raise ApiError(400, "body: expected a JSON object", "body")
    return data


def rfc3339(seconds: float | None) -> str | None:
    """Epoch seconds as ``2026-01-15T10:30:00.123Z`` (None stays None)."""
    if seconds is None:
        return None
    text = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
