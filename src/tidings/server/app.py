"""The HTTP API of `tidings serve` (Starlette): events in, endpoints, deliveries, health, metrics.

Bodies must be declared JSON, are read and decoded by ``tidings.server.body`` and validated by
tidings' own rules; every rejection is RFC 9457 problem details (``server/problems.py``) with a
4xx status, never a traceback. When an API key is set, every route but ``/health`` needs it
(``Authorization: Bearer <key>`` or ``X-API-Key``). Times are RFC 3339 in UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import uuid_utils
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.config import LEASE_RULE, fits_lease
from tidings.event import SPECVERSION, Event, EventError, from_dict
from tidings.headers import headers_problem
from tidings.server.body import EVENT_TYPES, ApiError, json_body
from tidings.server.metrics import render_metrics
from tidings.server.problems import exception_handlers, problem
from tidings.server.service import Service
from tidings.store.base import Criteria, DuplicateEvent, StoreError
from tidings.topics import PatternError, compile_pattern
from tidings.webhooks.endpoint import Auth, Endpoint, PayloadFormat, inherit
from tidings.webhooks.guard import UnsafeURL, check_url, resolve_checked
from tidings.webhooks.queue import WebhookDelivery, WebhookQueueFull
from tidings.webhooks.signing import SigningError, generate_secret, parse_secret

__all__ = ["create_app"]

log = logging.getLogger("tidings.server")

_json = msgspec.json.Encoder()


def _reply(data: Any, status: int = 200) -> Response:
    return Response(_json.encode(data), status, media_type="application/json")


async def _json_object(request: Request, limit: int) -> dict[str, Any]:
    data = await json_body(request, limit)
    if not isinstance(data, dict):
        raise ApiError(400, "body: expected a JSON object")
    return data


def _rfc3339(seconds: float | None) -> str | None:
    """Epoch seconds as ``2026-01-15T10:30:00.123Z`` (what the rest of the API reads and writes)."""
    if seconds is None:
        return None
    text = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


_DELIVERY_TIMES = ("next_attempt_at", "created_at", "updated_at", "delivered_at")


def _delivery(d: WebhookDelivery) -> dict[str, Any]:
    data: dict[str, Any] = dataclasses.asdict(d)
    for name in _DELIVERY_TIMES:
        data[name] = _rfc3339(data[name])
    return data


def _from_seed(item: dict[str, Any]) -> dict[str, Any]:
    """Seed 000's ``{"event_type", "timestamp", "data"}`` becomes a CloudEvent."""
    if "type" in item or "event_type" not in item:
        return item
    out: dict[str, Any] = {"type": item["event_type"]}
    if "timestamp" in item:
        out["time"] = item["timestamp"]
    if "data" in item:
        out["data"] = item["data"]
    if "id" in item:
        out["id"] = item["id"]
    return out


def _events(data: Any, max_batch: int) -> list[Event]:
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ApiError(400, "body: expected an event or a non-empty list of events")
    if len(items) > max_batch:
        raise ApiError(413, f"{len(items)} events in one request; the limit is {max_batch}")
    events: list[Event] = []
    for i, item in enumerate(items):
        where = f"[{i}]." if isinstance(data, list) else ""
        if not isinstance(item, dict):
            raise ApiError(400, f"{where or 'body'}: expected a JSON object", where or None)
        version = item.get("specversion", SPECVERSION)
        if version != SPECVERSION:
            raise ApiError(
                400,
                f"{where}specversion: expected {SPECVERSION!r} (CloudEvents 1.0), got "
                f"{version!r}; send specversion 1.0 or leave it out",
                f"{where}specversion",
            )
        try:  # from_dict fills in id, time, source and specversion when a producer leaves them
            events.append(from_dict(_from_seed(item)))
        except EventError as exc:
            raise ApiError(400, f"{where}{exc}", f"{where}{exc.field}") from None
    return events


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, f"{name}: expected an ISO 8601 time like 2026-01-15T10:30:00Z", name
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _int(value: str | None, name: str, default: int, lo: int = 0, hi: int = 10_000) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{name}: expected a whole number, got {value!r}", name) from None
    if not lo <= number <= hi:
        raise ApiError(400, f"{name}: expected {lo}..{hi}, got {number}", name)
    return number


_ENDPOINT_FIELDS = {
    "url", "events", "secret", "headers", "auth", "timeout", "rate_limit", "burst",
    "max_in_flight", "enabled", "format", "compress", "max_retries", "retry_delay",
    "max_delay",
}  # fmt: skip
_FORMATS: tuple[PayloadFormat, ...] = ("seed", "cloudevents", "cloudevents-binary")


def _number(data: dict[str, Any], name: str, lo: float, integer: bool = False) -> Any:
    value = data[name]
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < lo:
        kind = "a whole number" if integer else "a number"
        raise ApiError(422, f"{name}: expected {kind} >= {lo:g}, got {value!r}", name)
    return value


def _patterns(events: Any) -> tuple[str, ...]:
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise ApiError(422, "events: expected a non-empty list of event type patterns", "events")
    try:
        for pattern in events:
            compile_pattern(pattern)
    except PatternError as exc:
        raise ApiError(422, f"events: {exc}", "events") from None
    return tuple(events)


def _endpoint_changes(data: dict[str, Any], creating: bool) -> dict[str, Any]:
    """Validate an endpoint body into ``Endpoint`` keyword arguments (secret handled apart)."""
    unknown = sorted(set(data) - _ENDPOINT_FIELDS)
    if unknown:
        known = ", ".join(sorted(_ENDPOINT_FIELDS))
        raise ApiError(422, f"unknown field(s) {', '.join(unknown)}; expected: {known}", unknown[0])
    if creating and "url" not in data:
        raise ApiError(422, "url: required (the http(s) address to deliver to)", "url")
    out: dict[str, Any] = {}
    if "url" in data:
        if not isinstance(data["url"], str):
            raise ApiError(422, "url: expected a string", "url")
        try:
            check_url(data["url"])
        except UnsafeURL as exc:
            raise ApiError(422, f"url: {exc}", "url") from None
        out["url"] = data["url"]
    if "events" in data:
        out["events"] = _patterns(data["events"])
    if "headers" in data:
        headers = data["headers"]
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ApiError(422, "headers: expected an object of string values", "headers")
        out["headers"] = headers
    if "auth" in data:
        try:
            out["auth"] = None if data["auth"] is None else msgspec.convert(data["auth"], Auth)
        except msgspec.ValidationError as exc:
            forms = "{bearer}, {username, password} or {header, value}"
            raise ApiError(422, f"auth: {exc}; expected {forms}", "auth") from None
    for name, lo, integer in (
        ("timeout", 0.1, False), ("rate_limit", 0.001, False), ("burst", 1, True),
        ("max_in_flight", 1, True), ("max_retries", 0, True), ("retry_delay", 0, False),
        ("max_delay", 0, False),
    ):  # fmt: skip
        if name in data and data[name] is not None:
            out[name] = _number(data, name, lo, integer)
    if "enabled" in data:
        if not isinstance(data["enabled"], bool):
            raise ApiError(422, "enabled: expected true or false", "enabled")
        out["enabled"] = data["enabled"]
        if data["enabled"]:
            out["disabled_reason"] = None
    if "compress" in data:
        if data["compress"] not in ("none", "gzip"):
            raise ApiError(422, "compress: expected none or gzip", "compress")
        out["compress"] = data["compress"]
    if "format" in data:
        if data["format"] not in _FORMATS:
            raise ApiError(422, f"format: expected one of {', '.join(_FORMATS)}", "format")
        out["format"] = data["format"]
    return out


def _check_endpoint(ep: Endpoint, lease: float, given: dict[str, Any]) -> None:
    """Rules across keys, on the endpoint as it would be saved (what the request gave plus what
    it keeps or inherits): the same header rules as the config file, a timeout the worker's
    lease can hold, retry delays in order."""
    problem = headers_problem(ep.headers, ep.auth)
    if problem is not None:
        key = ".".join(problem[0])
        raise ApiError(422, f"{key}: {problem[1]}", key)
    if not fits_lease(ep.timeout, lease):
        raise ApiError(
            422,
            f"timeout: {ep.timeout:g}s is not shorter than server.lease ({lease:g}s): "
            f"{LEASE_RULE}; use a timeout below {lease:g}s (a few seconds less leaves room to "
            "wait for a free slot), or raise server.lease in the config file",
            "timeout",
        )
    if ep.max_delay < ep.retry_delay:
        key = "max_delay" if "max_delay" in given else "retry_delay"
        raise ApiError(
            422,
            f"{key}: expected max_delay ({ep.max_delay:g}s) >= retry_delay ({ep.retry_delay:g}s) "
            "(keys the request leaves out come from the endpoint or the config's events section)",
            key,
        )


def _guarded(
    service: Service, handler: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """API key check and error mapping around one handler."""

    async def wrapper(request: Request) -> Response:
        key = service.settings.server.api_key
        if key is not None and request.url.path != "/health":
            given = request.headers.get("x-api-key") or ""
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:]
            if not hmac.compare_digest(given.encode(), key.encode()):
                return problem(
                    401,
                    "missing or wrong API key: send Authorization: Bearer <key>",
                    "Authorization",
                    kind="unauthorized",
                    headers={"WWW-Authenticate": 'Bearer realm="tidings"'},
                )
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except WebhookQueueFull as exc:
            return problem(503, str(exc), kind="queue-full")
        except DuplicateEvent as exc:  # the client's input, not the store's health
            return problem(409, str(exc), "id", kind="duplicate-event")
        except StoreError as exc:
            log.error("store error on %s %s: %s", request.method, request.url.path, exc)
            return problem(503, f"the store is not available: {exc}", kind="store-unavailable")

    return wrapper


Handler = Callable[[Request], Awaitable[Response]]


def _routes(operations: list[tuple[str, str, Handler]]) -> list[Route]:
    """One Starlette route per path, dispatching on the method: a method the path does not
    take is then a 405 whose ``Allow`` lists every method it does."""
    by_path: dict[str, dict[str, Handler]] = {}
    for method, path, handler in operations:
        by_path.setdefault(path, {})[method] = handler
    routes = []
    for path, handlers in by_path.items():

        async def endpoint(request: Request, handlers: dict[str, Handler] = handlers) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await handlers[method](request)

        routes.append(Route(path, endpoint, methods=list(handlers)))
    return routes


class _Api:
    """The route handlers; one instance per app, holding the service they act on."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.limit = service.settings.server.max_body_bytes

    # ---- events ----------------------------------------------------------------------------

    async def post_events(self, request: Request) -> Response:
        data = await json_body(request, self.limit, EVENT_TYPES)
        events = _events(data, self.service.settings.server.max_batch)
        accepted = await self.service.aaccept(events)
        return _reply(
            {"accepted": len(accepted.ids), "ids": accepted.ids, "deliveries": accepted.deliveries},
            202,
        )

    async def get_events(self, request: Request) -> Response:
        q = request.query_params
        types = tuple(t for t in q.getlist("type") if t)
        try:
            criteria = Criteria(
                types=types,
                since=_time(q.get("since"), "since"),
                until=_time(q.get("until"), "until"),
                correlation_id=q.get("correlation_id"),
                aggregate_id=q.get("aggregate_id"),
                after_position=_int(q.get("after"), "after", 0, 0, 2**62),
                limit=_int(q.get("limit"), "limit", 100, 1, 1000),
            )
        except (PatternError, ValueError) as exc:
            raise ApiError(400, f"type: {exc}", "type") from None
        records = await self.service.store.aload(criteria)
        return _reply(
            {
                "events": [
                    {"position": r.position, "event": msgspec.json.decode(r.event.to_json())}
                    for r in records
                ],
                "next_after": records[-1].position if records else None,
            }
        )

    # ---- endpoints -------------------------------------------------------------------------

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
        eps = await asyncio.to_thread(self.service.queue.endpoints)
        return _reply({"endpoints": [ep.public() for ep in eps]})

    async def create_endpoint(self, request: Request) -> Response:
        data = await _json_object(request, self.limit)
        secret = data.pop("secret", None)
        changes = _endpoint_changes(data, creating=True)
        settings = self.service.settings
        # What the request leaves out comes from the config's events section, as in the file.
        ep = Endpoint(
            id=f"ep_{uuid_utils.uuid7().hex}", source="api", **inherit(settings.events, changes)
        )
        _check_endpoint(ep, float(settings.server.lease), changes)
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
        return _reply({**ep.public(), "secret": secret}, 201)

    async def get_endpoint(self, request: Request) -> Response:
        ep = await asyncio.to_thread(self._endpoint, request.path_params["id"])
        return _reply(ep.public())

    async def update_endpoint(self, request: Request) -> Response:
        ep = await asyncio.to_thread(self._endpoint, request.path_params["id"])
        data = await _json_object(request, self.limit)
        if "secret" in data:
            raise ApiError(
                422, "secret: change it with POST /endpoints/{id}/rotate-secret", "secret"
            )
        changes = _endpoint_changes(data, creating=False)
        updated = msgspec.structs.replace(ep, **changes)
        _check_endpoint(updated, float(self.service.settings.server.lease), changes)
        if "url" in changes:
            # A URL that arrives through the API is untrusted whatever endpoint it lands on; a
            # config endpoint's is then guarded at connect time too.
            await self._check_reachable_safely(changes["url"])
            if ep.source == "config":
                updated = msgspec.structs.replace(updated, url_from_api=True)
        await asyncio.to_thread(self.service.queue.save_endpoint, updated)
        await self.service.endpoints_changed()
        return _reply(updated.public())

    async def set_enabled(self, request: Request, enabled: bool) -> Response:
        endpoint_id = request.path_params["id"]
        await asyncio.to_thread(self._endpoint, endpoint_id)
        reason = None if enabled else "disabled through the API"
        ep = await asyncio.to_thread(self.service.queue.set_enabled, endpoint_id, enabled, reason)
        await self.service.endpoints_changed()
        return _reply(ep.public())

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
        return _reply({**rotated.public(), "secret": secret})

    # ---- deliveries ------------------------------------------------------------------------

    async def list_deliveries(self, request: Request) -> Response:
        q = request.query_params
        state = q.get("state")
        states = ("pending", "delivering", "delivered", "dead", "cancelled")
        if state is not None and state not in states:
            raise ApiError(400, f"state: expected one of {', '.join(states)}", "state")
        endpoint_id = request.path_params.get("id") or q.get("endpoint_id")
        rows = await asyncio.to_thread(
            self.service.queue.deliveries,
            endpoint_id=endpoint_id,
            state=state,
            event_id=q.get("event_id"),
            limit=_int(q.get("limit"), "limit", 100, 1, 1000),
            before=q.get("before"),
        )
        return _reply(
            {
                "deliveries": [_delivery(d) for d in rows],
                "next_before": rows[-1].id if rows else None,
            }
        )

    async def get_delivery(self, request: Request) -> Response:
        delivery_id = request.path_params["id"]
        d = await asyncio.to_thread(self.service.queue.delivery, delivery_id)
        if d is None:
            raise ApiError(404, f"no delivery {delivery_id!r}")
        attempts = await asyncio.to_thread(self.service.queue.attempts, delivery_id)
        return _reply(
            {
                **_delivery(d),
                "attempt_log": [
                    {
                        "number": a.number,
                        "started_at": _rfc3339(a.started_at),
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
        return _reply({"retried": 1}, 202)

    async def retry_dead(self, request: Request) -> Response:
        endpoint_id = request.path_params["id"]
        await asyncio.to_thread(self._endpoint, endpoint_id)
        count = await asyncio.to_thread(self.service.queue.retry_dead, endpoint_id)
        self.service.worker.wake()
        return _reply({"retried": count}, 202)

    async def replay(self, request: Request) -> Response:
        data = await _json_object(request, self.limit)
        since = _time(data.get("since"), "since")
        if since is None:
            raise ApiError(400, "since: required, e.g. 2026-01-15T00:00:00Z", "since")
        types = data.get("types")
        if types is not None and (
            not isinstance(types, list) or not all(isinstance(t, str) for t in types)
        ):
            raise ApiError(400, "types: expected a list of event type patterns", "types")
        try:
            criteria = Criteria(
                types=tuple(types) if types else (),
                since=since,
                until=_time(data.get("until"), "until"),
            )
        except (PatternError, ValueError) as exc:
            raise ApiError(400, f"types: {exc}", "types") from None
        dry_run = data.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ApiError(400, "dry_run: expected true or false", "dry_run")
        # Refused whole (503, WebhookQueueFull) when it does not fit in the queue's bound now.
        done = await asyncio.to_thread(self.service.replay, criteria, dry_run=dry_run)
        if dry_run:
            return _reply(
                {"dry_run": True, "deliveries": done.deliveries, "per_endpoint": done.per_endpoint}
            )
        self.service.worker.wake()
        return _reply({"deliveries": done.deliveries}, 202)

    # ---- operations ------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        healthy, report = await self.service.health()
        return _reply(report, 200 if healthy else 503)

    async def metrics(self, request: Request) -> Response:
        body, content_type = await render_metrics(self.service)
        return Response(body, media_type=content_type)


def create_app(service: Service, *, manage_lifecycle: bool = True) -> Starlette:
    """The ASGI app for ``service`` (started and stopped with the app unless told not to)."""
    api = _Api(service)
    operations = [
        ("POST", "/events", api.post_events),
        ("GET", "/events", api.get_events),
        ("GET", "/endpoints", api.list_endpoints),
        ("POST", "/endpoints", api.create_endpoint),
        ("GET", "/endpoints/{id}", api.get_endpoint),
        ("PATCH", "/endpoints/{id}", api.update_endpoint),
        ("DELETE", "/endpoints/{id}", api.delete_endpoint),
        ("POST", "/endpoints/{id}/disable", api.disable_endpoint),
        ("POST", "/endpoints/{id}/enable", api.enable_endpoint),
        ("POST", "/endpoints/{id}/rotate-secret", api.rotate_secret),
        ("GET", "/endpoints/{id}/deliveries", api.list_deliveries),
        ("POST", "/endpoints/{id}/retry-dead", api.retry_dead),
        ("GET", "/deliveries", api.list_deliveries),
        ("GET", "/deliveries/{id}", api.get_delivery),
        ("POST", "/deliveries/{id}/retry", api.retry_delivery),
        ("POST", "/replay", api.replay),
        ("GET", "/health", api.health),
        ("GET", "/metrics", api.metrics),
    ]
    routes = _routes([(m, p, _guarded(service, h)) for m, p, h in operations])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not manage_lifecycle:
            yield
            return
        await service.start()
        watcher = asyncio.ensure_future(service.watch_config())
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # SIGHUP reloads the config; only possible from the main thread (not in tests)
            loop.add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(service.reload_config())
            )
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await service.stop()

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=exception_handlers(),
    )
