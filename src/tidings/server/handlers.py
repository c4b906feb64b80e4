"""The route handlers of the events, endpoints, deliveries and operations routes.

Each reads its checked query with ``operations.query`` and answers with ``jsonio.reply``;
refusals are ``ApiError`` s, turned into problem details by the guard of its ``Operation``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import msgspec
import uuid_utils
from starlette.requests import Request
from starlette.responses import Response

from tidings.server.body import EVENT_TYPES, ApiError, json_body
from tidings.server.browse import stored_event
from tidings.server.cursors import page_next, page_start
from tidings.server.endpoint_input import check_endpoint, endpoint_changes
from tidings.server.event_input import parse_events
from tidings.server.jsonio import json_object, reply, rfc3339
from tidings.server.metrics import render_metrics
from tidings.server.operations import query
from tidings.server.replays import replay_criteria
from tidings.server.service import Service
from tidings.server.stream import StreamCollector
from tidings.server.triggers_metrics import triggers_collectors
from tidings.store.base import Criteria
from tidings.topics import PatternError
from tidings.webhooks.endpoint import Endpoint, inherit
from tidings.webhooks.guard import UnsafeURL, resolve_checked
from tidings.webhooks.queue import WebhookDelivery
from tidings.webhooks.signing import SigningError, generate_secret, parse_secret

__all__ = ["Api"]

STATES = ("pending", "delivering", "delivered", "dead", "cancelled")


_DELIVERY_TIMES = ("next_attempt_at", "created_at", "updated_at", "delivered_at")


def _delivery(d: WebhookDelivery) -> dict[str, Any]:
    data: dict[str, Any] = dataclasses.asdict(d)
    for name in _DELIVERY_TIMES:
        data[name] = rfc3339(data[name])
    return data


class Api:
    """The route handlers; one instance per app, holding the service they act on."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.limit = service.settings.server.max_body_bytes

    # ---- events ----------------------------------------------------------------------------

    async def post_events(self, request: Request) -> Response:
        data = await json_body(request, self.limit, EVENT_TYPES)
        events = parse_events(data, self.service.settings.server.max_batch)
        accepted = await self.service.aaccept(events)
        return reply(
            {"accepted": len(accepted.ids), "ids": accepted.ids, "deliveries": accepted.deliveries},
            202,
        )

    async def get_events(self, request: Request) -> Response:
        q = query(request)
        limit = q.limit()
        start = page_start(request)
        after = start if isinstance(start, int) else q.integer("after", 0, 0, 2**62)
        try:
            criteria = Criteria(
                types=tuple(q.all("type")),
                since=q.time("since"),
                until=q.time("until"),
                correlation_id=q.text("correlation_id"),
                aggregate_id=q.text("aggregate_id"),
                stream=q.text("stream"),
                after_position=after,
                limit=limit + 1,
            )
        except PatternError as exc:
            raise ApiError(400, f"type: {exc}", "type") from None
        records = await self.service.store.aload(criteria)
        page = records[:limit]
        last = page[-1].position if page else None
        more = len(records) > limit
        return reply(
            {
                "events": [stored_event(r) for r in page],
                "next_after": last,
                "next_cursor": page_next(request, more, last),
            }
        )

    async def get_event(self, request: Request) -> Response:
        """One stored event, by its store position or its id."""
        key: str = request.path_params["id"]
        store = self.service.store
        position = int(key) if key.isdigit() and len(key) < 19 else None
        if position is None:
            position = await asyncio.to_thread(self.service.queue.event_position, key)
        records = [] if not position else await store.aread_all(position - 1, 1)
        if not records or records[0].position != position:
            raise ApiError(404, f"no event {key!r} (give its id or its store position)")
        return reply(stored_event(records[0]))

    def _endpoint(self, endpoint_id: str) -> Endpoint:
        ep = self.service.queue.endpoint(endpoint_id)
        if ep is None:
            raise ApiError(404, f"no endpoint {endpoint_id!r}")
        return ep

    async def _check_reachable_safely(self, url: str) -> None:
        try:
            await resolve_checked(url, self.service.allow_networks)
        except UnsafeURL as exc:
            raise ApiError(422, f"url: {exc}", "url") from None
        except OSError as exc:
            raise ApiError(422, f"url: the host does not resolve: {exc}", "url") from None

    async def list_endpoints(self, request: Request) -> Response:
        limit = query(request).limit()
        after = page_start(request)
        eps = sorted(await asyncio.to_thread(self.service.queue.endpoints), key=lambda e: e.id)
        if isinstance(after, str):
            eps = [ep for ep in eps if ep.id > after]
        page = eps[:limit]
        more = len(eps) > limit
        return reply(
            {
                "endpoints": [ep.public() for ep in page],
                "next_cursor": page_next(request, more, page[-1].id if page else None),
            }
        )

    async def create_endpoint(self, request: Request) -> Response:
        data = await json_object(request, self.limit)
        secret = data.pop("secret", None)
        changes = endpoint_changes(data, creating=True)
        settings = self.service.settings
        # What the request leaves out comes from the config's events section, as in the file.
        ep = Endpoint(
            id=f"ep_{uuid_utils.uuid7().hex}", source="api", **inherit(settings.events, changes)
        )
        check_endpoint(ep, float(settings.server.lease), changes)
        await self._check_reachable_safely(ep.url)
        if secret is None:
            secret = generate_secret()
        try:
            parse_secret(secret)
        except (SigningError, TypeError):
            raise ApiError(
                422, "secret: expected whsec_<base64>, or leave it out", "secret"
            ) from None

        ep = msgspec.structs.replace(ep, secrets=(secret,))
        await asyncio.to_thread(self.service.queue.save_endpoint, ep)
        await self.service.endpoints_changed()
        # The secret is shown once, now; the API never returns it again.
        return reply({**ep.public(), "secret": secret}, 201)

    async def get_endpoint(self, request: Request) -> Response:
        ep = await asyncio.to_thread(self._endpoint, request.path_params["id"])
        return reply(ep.public())

    async def update_endpoint(self, request: Request) -> Response:
        ep = await asyncio.to_thread(self._endpoint, request.path_params["id"])
        data = await json_object(request, self.limit)
        if "secret" in data:
            raise ApiError(
                422, "secret: change it with POST /endpoints/{id}/rotate-secret", "secret"
            )
        changes = endpoint_changes(data, creating=False)
        updated = msgspec.structs.replace(ep, **changes)
        check_endpoint(updated, float(self.service.settings.server.lease), changes)
        if "url" in changes:
            # A URL that arrives through the API is untrusted whatever endpoint it lands on; a
            # config endpoint's is then guarded at connect time too.
            await self._check_reachable_safely(changes["url"])
            if ep.source == "config":
                updated = msgspec.structs.replace(updated, url_from_api=True)
        await asyncio.to_thread(self.service.queue.save_endpoint, updated)
        await self.service.endpoints_changed()
        return reply(updated.public())

    async def set_enabled(self, request: Request, enabled: bool) -> Response:
        endpoint_id = request.path_params["id"]
        await asyncio.to_thread(self._endpoint, endpoint_id)
        reason = None if enabled else "disabled through the API"
        ep = await asyncio.to_thread(self.service.queue.set_enabled, endpoint_id, enabled, reason)
        await self.service.endpoints_changed()
        return reply(ep.public())

    async def disable_endpoint(self, request: Request) -> Response:
        return await self.set_enabled(request, False)

    async def enable_endpoint(self, request: Request) -> Response:
        return await self.set_enabled(request, True)

    async def delete_endpoint(self, request: Request) -> Response:
        endpoint_id = request.path_params["id"]
        if not await asyncio.to_thread(self.service.queue.delete_endpoint, endpoint_id):
            raise ApiError(404, f"no endpoint {endpoint_id!r}")
        await self.service.endpoints_changed()
        return Response(status_code=204)

    async def rotate_secret(self, request: Request) -> Response:
        """New secret signs first; the previous one keeps signing until the next rotation, so
        receivers can switch without a window of failed verifications."""
        ep = await asyncio.to_thread(self._endpoint, request.path_params["id"])
        secret = generate_secret()
        rotated = msgspec.structs.replace(ep, secrets=(secret, *ep.secrets[:1]))
        await asyncio.to_thread(self.service.queue.save_endpoint, rotated)
        await self.service.endpoints_changed()
        return reply({**rotated.public(), "secret": secret})

    # ---- deliveries ------------------------------------------------------------------------

    async def list_deliveries(self, request: Request) -> Response:
        """Newest first. ``/dlq`` is this list with ``state`` fixed to dead."""
        q = query(request)
        limit = q.limit()
        start = page_start(request)
        dead_letters = request.url.path == "/dlq"
        state = "dead" if dead_letters else q.choice("state", STATES)
        endpoint_id = request.path_params.get("id") or q.text("endpoint_id")
        rows = await asyncio.to_thread(
            self.service.queue.deliveries,
            endpoint_id=endpoint_id,
            state=state,
            event_id=q.text("event_id"),
            limit=limit + 1,
            before=start if isinstance(start, str) else q.text("before"),
        )
        page = rows[:limit]
        last = page[-1].id if page else None
        return reply(
            {
                "deliveries": [_delivery(d) for d in page],
                "next_before": last,
                "next_cursor": page_next(request, len(rows) > limit, last),
            }
        )

    async def get_delivery(self, request: Request) -> Response:
        delivery_id = request.path_params["id"]
        d = await asyncio.to_thread(self.service.queue.delivery, delivery_id)
        if d is None:
            raise ApiError(404, f"no delivery {delivery_id!r}")
        attempts = await asyncio.to_thread(self.service.queue.attempts, delivery_id)
        return reply(
            {
                **_delivery(d),
                "attempt_log": [
                    {
                        "number": a.number,
                        "started_at": rfc3339(a.started_at),
                        "duration": a.duration,
                        "status_code": a.status_code,
                        "response_body": a.response_body,
                        "error": a.error,
                    }
                    for a in attempts
                ],
            }
        )

    async def retry_delivery(self, request: Request) -> Response:
        delivery_id = request.path_params["id"]
        if not await asyncio.to_thread(self.service.queue.retry, delivery_id):
            raise ApiError(404, f"no delivery {delivery_id!r}")
        self.service.worker.wake()
        return reply({"retried": 1}, 202)

    async def retry_dead(self, request: Request) -> Response:
        endpoint_id = request.path_params["id"]
        await asyncio.to_thread(self._endpoint, endpoint_id)
        count = await asyncio.to_thread(self.service.queue.retry_dead, endpoint_id)
        self.service.worker.wake()
        return reply({"retried": count}, 202)

    async def replay(self, request: Request) -> Response:
        """The synchronous replay (kept for clients of before ``POST /replays``)."""
        data = await json_object(request, self.limit)
        criteria, _ = replay_criteria(data)
        dry_run = data.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ApiError(400, "dry_run: expected true or false", "dry_run")
        # Refused whole (503, WebhookQueueFull) when it does not fit in the queue's bound now.
        done = await asyncio.to_thread(self.service.replay, criteria, dry_run=dry_run)
        if dry_run:
            return reply(
                {"dry_run": True, "deliveries": done.deliveries, "per_endpoint": done.per_endpoint}
            )
        self.service.worker.wake()
        return reply({"deliveries": done.deliveries}, 202)

    async def health(self, request: Request) -> Response:
        healthy, report = await self.service.health()
        return reply(report, 200 if healthy else 503)

    async def metrics(self, request: Request) -> Response:
        triggers = getattr(request.app.state, "tidings_triggers", None)
        extra: list[Any] = list(await triggers_collectors(triggers))
        hub = getattr(request.app.state, "tidings_hub", None)
        if hub is not None:
            extra.append(StreamCollector(hub))
        body, content_type = await render_metrics(self.service, extra)
        return Response(body, media_type=content_type)
