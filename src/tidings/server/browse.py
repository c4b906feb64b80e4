"""Reading the store through the API: streams and their versions, and the store subscriptions
this server runs with their positions and lag.

A stream's events are paged by store position (the order of their versions); a subscription's
lag asks the store (a count and a one-row read each), so the list is paged to bound the cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tidings.server.body import ApiError
from tidings.server.cursors import page_next, page_start
from tidings.server.jsonio import reply
from tidings.server.operations import query
from tidings.server.service import Service
from tidings.store.base import Criteria, Recorded, StoreSubscription

__all__ = ["Browse", "stored_event"]


def stored_event(r: Recorded) -> dict[str, Any]:
    out: dict[str, Any] = {"position": r.position, "event": msgspec.json.decode(r.event.to_json())}
    if r.stream is not None:
        out["stream"], out["version"] = r.stream, r.version
    return out


def _subscription(sub: StoreSubscription) -> dict[str, Any]:
    lag_events: int | None = None
    lag_seconds: float | None = None
    with contextlib.suppress(Exception):  # the store is away: the rest still helps
        lag = sub.lag()
        lag_events, lag_seconds = lag.events, round(lag.seconds, 3)
    return {
        "name": sub.name,
        "position": sub.position,
        "lag_events": lag_events,
        "lag_seconds": lag_seconds,
        "handled": sub.handled,
        "failed": sub.failed,
        "running": sub.running,
        "halted": sub.error is not None,
        "error": None if sub.error is None else str(sub.error),
    }


class Browse:
    def __init__(self, service: Service) -> None:
        self.service = service

    async def list_streams(self, request: Request) -> Response:
        limit = query(request).limit()
        after = page_start(request)
        rows = await asyncio.to_thread(
            self.service.store.streams, after if isinstance(after, str) else None, limit + 1
        )
        page = rows[:limit]
        return reply(
            {
                "streams": [{"stream": name, "version": version} for name, version in page],
                "next_cursor": page_next(request, len(rows) > limit, page[-1][0] if page else None),
            }
        )

    async def get_stream(self, request: Request) -> Response:
        name = request.path_params["stream"]
        limit = query(request).limit()
        after = page_start(request)
        store = self.service.store
        version = await asyncio.to_thread(store.stream_version, name)
        if version == 0:
            raise ApiError(404, f"no stream {name!r} (no event was appended to it)")
        criteria = Criteria(
            stream=name, after_position=after if isinstance(after, int) else 0, limit=limit + 1
        )
        records = await store.aload(criteria)
        page = records[:limit]
        return reply(
            {
                "stream": name,
                "version": version,
                "events": [stored_event(r) for r in page],
                "next_cursor": page_next(
                    request, len(records) > limit, page[-1].position if page else None
                ),
            }
        )

    async def list_subscriptions(self, request: Request) -> Response:
        limit = query(request).limit()
        after = page_start(request)
        store = self.service.store
        subs = sorted(store.subscriptions(), key=lambda s: s.name)
        if isinstance(after, str):
            subs = [s for s in subs if s.name > after]
        page = subs[:limit]
        views = await asyncio.to_thread(lambda: [_subscription(s) for s in page])
        head = await asyncio.to_thread(store.head)
        return reply(
            {
                "head": head,
                "subscriptions": views,
                "next_cursor": page_next(
                    request, len(subs) > limit, page[-1].name if page else None
                ),
            }
        )
