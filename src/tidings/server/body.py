"""Reading a JSON request body of the HTTP API: content type, size, nesting depth and text.

Each check refuses with an ``ApiError`` that says what is wrong and where, before the body is
turned into Python objects: a JSON content type is required (a web page can only send
``text/plain`` and form bodies across sites without asking, so this keeps other sites from
posting to a keyless server on loopback); nesting is bounded (deep JSON would exhaust the
decoder's and every later encoder's recursion); and invalid UTF-8 or a lone surrogate escape is
named with its byte offset instead of msgspec's "Input data was truncated".
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tidings.server.problems import FieldError, problem

__all__ = [
    "EVENT_TYPES",
    "JSON_TYPES",
    "MAX_DEPTH",
    "ApiError",
    "decode_json",
    "json_body",
    "read_body",
]

MAX_DEPTH = 64  # arrays and objects inside each other, the outermost counted
JSON_TYPES = ("application/json",)
EVENT_TYPES = (
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
)

_decoder = msgspec.json.Decoder()


class ApiError(Exception):
    """A refusal the API answers with ``status`` as problem details (``server/problems.py``):
    ``message`` is the ``detail``, ``field`` the failing input's path, ``kind`` names a
    ``type`` a client may act on, ``errors`` lists several failing inputs at once."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        *,
        kind: str | None = None,
        errors: list[FieldError] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.kind = kind
        self.errors = errors

    def response(self) -> Response:
        return problem(self.status, self.message, self.field, kind=self.kind, errors=self.errors)


def check_content_type(request: Request, accepted: tuple[str, ...]) -> None:
    """Refuse with 415 unless the body is declared as one of ``accepted`` (any parameters, but
    a charset, if given, must be UTF-8: JSON is UTF-8)."""
    declared = request.headers.get("content-type", "")
    media, _, params = declared.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media.strip().lower() in accepted and charset in (None, "utf-8", "utf8"):
        return
    got = f"got {declared!r}" if declared else "none was given"
    raise ApiError(
        415,
        f"Content-Type: expected {' or '.join(accepted)} (UTF-8), {got}; send the body as JSON "
        "with that header",
        "Content-Type",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (checked while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, limit: int, accepted: tuple[str, ...] = JSON_TYPES) -> Any:
    """Content type checked, body read within ``limit`` and decoded; ``{}`` for no body."""
    check_content_type(request, accepted)
    raw = await read_body(request, limit)
    return decode_json(raw) if raw else {}


def decode_json(raw: bytes) -> Any:
    """``raw`` decoded, or a 400 saying what is wrong with it."""
    if _too_deep(raw):
        raise _too_deep_error()
    try:
        return _decoder.decode(raw)
    except RecursionError:  # unbalanced input the depth check cannot measure
        raise _too_deep_error() from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {_explain(raw, str(exc))}") from None


def _too_deep_error() -> ApiError:
    return ApiError(
        400,
        f"body is not accepted: arrays and objects are nested more than {MAX_DEPTH} levels deep "
        f"(the limit is {MAX_DEPTH}); flatten the data",
    )


_SHAPE = bytes.maketrans(b"{}", b"[]")
_NOT_SHAPE = bytes(b for b in range(256) if b not in b'[]{}"')


def _too_deep(raw: bytes) -> bool:
    """Whether arrays and objects nest more than ``MAX_DEPTH`` deep, without recursion.

    Only brackets outside strings count. With escaped backslashes and quotes removed, every
    quote opens or closes a string, so the brackets between quote 2k and 2k+1 are text. Each
    pass then deletes every innermost ``[]`` pair: a pair still there after ``MAX_DEPTH``
    passes holds more than that many levels, and a run of ``n`` opening brackets left after
    ``k`` passes nests ``n + k`` deep. The common case costs two ``count`` calls: fewer
    brackets than the limit cannot nest deeper than it.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in raw else raw
    shape = b"".join(text.translate(_SHAPE, _NOT_SHAPE).split(b'"')[::2])
    for passes in range(MAX_DEPTH + 1):
        if b"[" * (MAX_DEPTH + 1 - passes) in shape:
            return True
        inner = shape.replace(b"[]", b"")
        if len(inner) == len(shape):
            return False  # nothing left to pair; any unbalance is the decoder's to report
        shape = inner
    return True


_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def _explain(raw: bytes, message: str) -> str:
    """msgspec's message, or a precise one where msgspec's misleads: it calls a lone surrogate
    escape "truncated" (or points past it), and gives no position for invalid UTF-8."""
    if "UTF-8" in message:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"invalid UTF-8 at byte {exc.start} (JSON text must be UTF-8)"
    if "truncated" in message or "surrogate" in message:
        lone = _lone_surrogate(raw)
        if lone is not None:
            offset, escape = lone
            return (
                f"a lone surrogate {escape} at byte {offset} is not a character (a \\u escape "
                "of half a UTF-16 pair must be followed by the other half, as in \\ud83d\\ude00)"
            )
    return message


def _lone_surrogate(raw: bytes) -> tuple[int, str] | None:
    """The first ``\\uD800``-``\\uDFFF`` escape not part of a high + low pair: (offset, text)."""
    high: re.Match[bytes] | None = None
    for found in _ESCAPE.finditer(raw):
        digits = found.group(1)
        code = -1 if digits is None else int(digits, 16)
        if high is not None:
            if 0xDC00 <= code <= 0xDFFF and found.start() == high.end():
                high = None
                continue
            break
        if 0xD800 <= code <= 0xDBFF:
            high = found
        elif 0xDC00 <= code <= 0xDFFF:
            return found.start(), found.group().decode()
    if high is not None:
        return high.start(), high.group().decode()
    return None
