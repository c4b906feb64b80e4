"""The ``/api-keys`` routes (scope admin): make a key (shown once), list, revoke.

Keys from the config file are listed too (``source: config``) so an admin sees every key that
opens the server, but they are changed in the file, not here.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import uuid_utils
from starlette.requests import Request
from starlette.responses import Response

from tidings.config import SCOPES
from tidings.server.auth import Keys, digest
from tidings.server.body import ApiError
from tidings.server.cursors import page_next, page_start
from tidings.server.jsonio import json_object, reply, rfc3339
from tidings.server.keys_db import StoredKey
from tidings.server.operations import query
from tidings.server.service import Service

__all__ = ["KeysApi"]

PREFIX = "tdk_"  # tells a tidings key apart in a secret scanner or a log


class KeysApi:
    def __init__(self, service: Service, keys: Keys, limit: int) -> None:
        self.service = service
        self.keys = keys
        self.limit = limit

    def _store(self) -> Any:
        if self.keys.store is None:
            raise ApiError(
                409,
                "this store keeps no API keys (an in-memory store); list keys in "
                "server.api_keys in the config file",
                kind="no-key-store",
            )
        return self.keys.store

    def _all(self, stored: list[StoredKey]) -> list[dict[str, Any]]:
        settings = self.service.settings.server
        views = [
            {
                "id": k.id,
                "name": k.name,
                "prefix": k.prefix,
                "scopes": list(k.scopes),
                "created_at": rfc3339(k.created_at),
                "source": "api",
            }
            for k in stored
        ]
        for k in settings.api_keys:
            views.append(
                {
                    "id": f"config:{k.name}",
                    "name": k.name,
                    "prefix": "",
                    "scopes": list(k.scopes),
                    "created_at": None,
                    "source": "config",
                }
            )
        if settings.api_key is not None:
            views.append(
                {
                    "id": "config:api_key",
                    "name": "api_key",
                    "prefix": "",
                    "scopes": ["admin"],
                    "created_at": None,
                    "source": "config",
                }
            )
        return sorted(views, key=lambda v: v["id"])

    async def create_key(self, request: Request) -> Response:
        data = await json_object(request, self.limit)
        unknown = sorted(set(data) - {"name", "scopes"})
        if unknown:
            raise ApiError(400, f"{unknown[0]}: unknown field; expected name, scopes", unknown[0])
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise ApiError(
                400, "name: expected a non-empty string of at most 100 characters", "name"
            )
        scopes = data.get("scopes")
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(s, str) and s in SCOPES for s in scopes)
        ):
            raise ApiError(
                400, f"scopes: expected a non-empty list of {', '.join(SCOPES)}", "scopes"
            )
        configured = {k.name for k in self.service.settings.server.api_keys} | {"api_key"}
        if name in configured:
            raise ApiError(409, f"name: {name!r} is a key of the config file", "name")
        store = self._store()
        key = PREFIX + secrets.token_urlsafe(32)
        stored = StoredKey(
            f"key_{uuid_utils.uuid7().hex}",
            name,
            digest(key),
            key[:8],
            tuple(dict.fromkeys(scopes)),
            time.time(),
        )
        try:
            await asyncio.to_thread(store.insert, stored)
        except ValueError as exc:
            raise ApiError(409, f"name: {exc}", "name") from None
        await self.keys.refresh()
        view = next(v for v in self._all([stored]) if v["id"] == stored.id)
        # The key is shown once, now; only its SHA-256 is kept.
        return reply({**view, "key": key}, 201)

    async def list_keys(self, request: Request) -> Response:
        limit = query(request).limit()
        after = page_start(request)
        stored = [] if self.keys.store is None else await asyncio.to_thread(self.keys.store.keys)
        views = self._all(stored)
        if isinstance(after, str):
            views = [v for v in views if v["id"] > after]
        page = views[:limit]
        more = len(views) > limit
        return reply(
            {
                "api_keys": page,
                "next_cursor": page_next(request, more, page[-1]["id"] if page else None),
            }
        )

    async def delete_key(self, request: Request) -> Response:
        key_id = request.path_params["id"]
        if key_id.startswith("config:"):
            raise ApiError(409, f"{key_id!r} is in the config file: remove it there", "id")
        store = self._store()
        if not await asyncio.to_thread(store.delete, key_id):
            raise ApiError(404, f"no API key {key_id!r}")
        await self.keys.refresh()
        return Response(status_code=204)
