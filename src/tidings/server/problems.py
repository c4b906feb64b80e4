"""Every error of the HTTP API as RFC 9457 problem details (``application/problem+json``).

One shape for every refusal, so a client parses errors once: ``type``, ``title``, ``status``,
``detail`` and, when one input is to blame, ``field`` (its path: ``[3].time``, ``cursor``,
``headers.X-A``) and ``errors`` (``[{"field", "detail"}]``, every failing input, the first one
being ``field``). ``type`` is ``about:blank`` (the status says it all) unless the refusal has a
kind of its own a client may act on (``urn:tidings:problem:queue-full``, ...). Starlette's own
404 and 405 and any unexpected exception (a 500 that shows no traceback) answer in it too.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "PROBLEM_TYPE",
    "FieldError",
    "exception_handlers",
    "problem",
    "problem_type",
]

log = logging.getLogger("tidings.server")

PROBLEM_TYPE = "application/problem+json"
_URN = "urn:tidings:problem:"
_json = msgspec.json.Encoder()


def problem_type(kind: str | None) -> str:
    """The ``type`` URI of a kind of problem (``None``: ``about:blank``)."""
    return "about:blank" if kind is None else _URN + kind


class FieldError(msgspec.Struct, frozen=True, omit_defaults=True):
    """One failing input: its path and what is wrong with it."""

    field: str
    detail: str


def title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(
    status: int,
    detail: str,
    field: str | None = None,
    *,
    kind: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem details response; ``errors`` defaults to the one ``field`` when given."""
    body: dict[str, Any] = {
        "type": problem_type(kind),
        "title": title(status),
        "status": status,
        "detail": detail,
    }
    if errors is None and field is not None:
        errors = [FieldError(field, detail)]
    if field is None and errors:
        field = errors[0].field
    if field is not None:
        body["field"] = field
    if errors:
        body["errors"] = errors
    return Response(_json.encode(body), status, headers=headers, media_type=PROBLEM_TYPE)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, method not allowed, ...), in the one shape."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        detail = f"no route {request.method} {request.url.path}; see /openapi.json for the routes"
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    else:
        detail = exc.detail or title(status)
    if status < 400:
        return Response(status_code=status, headers=exc.headers)
    return problem(status, detail, headers=dict(exc.headers or {}))


async def _crashed(request: Request, exc: Exception) -> Response:
    """An unexpected exception: logged with its traceback, answered without one."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal error; the server log has the details", kind="internal")


def exception_handlers() -> dict[Any, Any]:
    """Starlette ``exception_handlers`` answering 404, 405 and 500 as problem details."""
    return {HTTPException: _http_exception, Exception: _crashed}
