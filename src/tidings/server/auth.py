"""Who may call the HTTP API: API keys with scopes, and ``require(request, scope)``.

Keys come from three places, all valid at once so a key can rotate (add the new one, move the
clients, remove the old one): ``server.api_key`` (one key, scope admin, as before),
``server.api_keys`` (named, with scopes; the key or its SHA-256 in the file) and keys made
through ``POST /api-keys`` (stored as SHA-256, see ``keys_db``). Scopes: ``read`` (GET
routes), ``publish`` (``POST /events``), ``admin`` (everything, keys included).

A given key is hashed and compared with every known digest by ``hmac.compare_digest``, all of
them, without stopping at a match: how long a check takes says nothing about which key, or
which part of one, was near. Keys are needed only when one is configured or stored (a server
beyond loopback must have one: the config check refuses it otherwise); without any, every
caller is ``anonymous`` with every scope, as before keys had scopes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import HTTPConnection

from tidings.config import SCOPES, ServerSettings
from tidings.server.body import ApiError
from tidings.server.keys_db import KeyStore, StoredKey

__all__ = [
    "KEY_COOKIE",
    "SCOPES",
    "Keys",
    "Principal",
    "Scope",
    "digest",
    "given_key",
    "require",
]

Scope = Literal["read", "publish", "admin"]

REFRESH = 5.0  # seconds a process trusts its copy of the stored keys (others may revoke)
MISS_REFRESH = 1.0  # a key not found looks again at most this often (no database flood)
KEY_COOKIE = "tidings_key"  # the dashboard's login (server/dashboard/session.py)
_COOKIE_METHODS = ("GET", "HEAD")  # reads only: a button must carry a CSRF token as well


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the key's name and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))


def digest(key: str) -> str:
    """The hex SHA-256 of a key, as stored and as ``server.api_keys[].sha256`` takes it."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def given_key(request: HTTPConnection) -> str | None:
    """The key a request (or a WebSocket handshake) carries: ``Authorization: Bearer <key>``
    or ``X-API-Key``; on GET, also the dashboard's login cookie."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    # The dashboard's cookie, for reads only (its pages, /events/stream): a write with it
    # goes through the dashboard's own routes, which check a CSRF token.
    cookie = (
        request.cookies.get(KEY_COOKIE) if request.scope.get("method") in _COOKIE_METHODS else None
    )
    return request.headers.get("x-api-key") or cookie


class Keys:
    """The keys a server accepts: the config's (re-read with it) and the stored ones."""

    def __init__(self, settings: Callable[[], ServerSettings], store: KeyStore | None) -> None:
        self.store = store
        self._settings_of = settings
        self._settings: ServerSettings | None = None
        self._configured: list[tuple[bytes, Principal]] = []
        self._stored: list[tuple[bytes, Principal]] = []
        self._loaded_at = -1e9
        self._lock = asyncio.Lock()
        self.use(settings())

    def use(self, settings: ServerSettings) -> None:
        """Take the keys of ``settings`` (at start and after a config reload)."""
        if settings is self._settings:
            return
        entries: list[tuple[bytes, Principal]] = []
        if settings.api_key is not None:
            entries.append((bytes.fromhex(digest(settings.api_key)), ANONYMOUS_ADMIN))
        for k in settings.api_keys:
            hexed = k.sha256.lower() if k.sha256 is not None else digest(k.key or "")
            entries.append((bytes.fromhex(hexed), Principal(k.name, frozenset(k.scopes))))
        self._configured = entries
        self._settings = settings

    def stored(self, keys: list[StoredKey]) -> None:
        self._stored = [
            (bytes.fromhex(k.sha256), Principal(k.name, frozenset(k.scopes))) for k in keys
        ]
        self._loaded_at = time.monotonic()

    async def refresh(self) -> None:
        if self.store is not None:
            async with self._lock:
                self.stored(await asyncio.to_thread(self.store.keys))

    async def _maybe_refresh(self, missed: bool) -> None:
        age = time.monotonic() - self._loaded_at
        if self.store is not None and (age > REFRESH or (missed and age > MISS_REFRESH)):
            await self.refresh()

    def required(self) -> bool:
        return bool(self._configured or self._stored)

    def _match(self, key: str) -> Principal | None:
        given = bytes.fromhex(digest(key))
        found: Principal | None = None
        for known, who in (*self._configured, *self._stored):
            if hmac.compare_digest(given, known) and found is None:
                found = who
        return found

    async def authenticate(self, key: str | None) -> Principal:
        """The principal of ``key``, or a 401 problem when keys are needed and it fits none."""
        self.use(self._settings_of())  # the config may have been reloaded
        await self._maybe_refresh(missed=False)
        if not self.required():
            return ANONYMOUS
        found = None if not key else self._match(key)
        if found is None and key:
            await self._maybe_refresh(missed=True)
            found = self._match(key)
        if found is None:
            raise ApiError(
                401,
                "missing or wrong API key: send Authorization: Bearer <key> (or X-API-Key)",
                "Authorization",
                kind="unauthorized",
            )
        return found


ANONYMOUS_ADMIN = Principal("api_key", frozenset({"admin"}))


async def require(request: HTTPConnection, scope: Scope, key: str | None = None) -> Principal:
    """The caller of ``request`` (or a WebSocket) if it holds ``scope``, else a 401 or 403
    ``ApiError``.

    For any route, old or new: routes declared in the route table have had their key checked
    already (``request.state.principal``); others (a stream, a dashboard page) are checked
    here, against the key of ``request`` or, when given, ``key`` (e.g. from a cookie).
    """
    who: Principal | None = None if key is not None else getattr(request.state, "principal", None)
    if who is None:
        keys: Keys = request.app.state.tidings_keys
        who = await keys.authenticate(key if key is not None else given_key(request))
        request.state.principal = who
    if not who.allows(scope):
        raise ApiError(
            403,
            f"the API key {who.name!r} has scopes {', '.join(sorted(who.scopes))}; this needs "
            f"{scope!r}: use a key with it (an admin can make one with POST /api-keys)",
            "Authorization",
            kind="forbidden",
        )
    return who
