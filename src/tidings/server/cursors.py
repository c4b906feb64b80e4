"""Opaque, tamper-evident page cursors for every list of the HTTP API.

A cursor is ``base64url(payload).base64url(mac)``: the payload holds where the next page starts
(a position, an id) and a digest of the route and its filters; the mac is HMAC-SHA256 under a
key the server draws at start. So a client cannot forge one (start a page where it likes, or
reuse one with other filters, and read past what the filters allow): an altered, truncated or
foreign cursor is a 400 naming ``cursor``, never a 500 or a wrong page. Cursors live as long as
the server process (the key is not written anywhere): after a restart a client starts again
from the first page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Any

import msgspec
from starlette.requests import Request

from tidings.server.body import ApiError
from tidings.server.params import Query

__all__ = ["Cursors", "page_next", "page_start"]

_MAC_BYTES = 16  # 128 bits of HMAC-SHA256: forging one is out of reach


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Cursors:
    """Makes and reads cursors under one key (random unless given, e.g. in tests)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    @staticmethod
    def _bound(route: str, filters: str) -> str:
        return hashlib.sha256(f"{route}\n{filters}".encode()).hexdigest()[:16]

    def make(self, route: str, filters: str, where: Any) -> str:
        """A cursor for the page after ``where`` of ``route`` with ``filters``."""
        payload = msgspec.json.encode([self._bound(route, filters), where])
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def read(self, route: str, filters: str, cursor: str | None) -> Any:
        """Where the page of ``cursor`` starts (None without one), or a 400 naming ``cursor``."""
        if cursor is None:
            return None
        bad = ApiError(
            400,
            "cursor: not a cursor this server gave for this list and these filters (altered, "
            "from another query, or from before a restart); pass next_cursor as it came, with "
            "the same filters, or leave cursor out to start from the first page",
            "cursor",
        )
        text, dot, mac = cursor.partition(".")
        if not dot:
            raise bad
        try:
            payload, given = _unb64(text), _unb64(mac)
        except (binascii.Error, ValueError):
            raise bad from None
        if not hmac.compare_digest(given, self._mac(payload)):
            raise bad
        try:
            bound, where = msgspec.json.decode(payload)
        except (msgspec.DecodeError, TypeError, ValueError):
            raise bad from None
        if bound != self._bound(route, filters):
            raise bad
        return where


def page_start(request: Request) -> Any:
    """Where the requested page starts: the value its ``cursor`` carries, or None."""
    q: Query = request.state.query
    cursors: Cursors = request.app.state.tidings_cursors
    return cursors.read(request.url.path, q.filters(), q.text("cursor"))


def page_next(request: Request, more: bool, where: Any) -> str | None:
    """``next_cursor`` for a page that ends at ``where`` (None when nothing follows)."""
    if not more:
        return None
    q: Query = request.state.query
    cursors: Cursors = request.app.state.tidings_cursors
    return cursors.make(request.url.path, q.filters(), where)
