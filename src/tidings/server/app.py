"""The HTTP API of `tidings serve` (Starlette): the route table, and the app made from it.

Every route is an ``Operation`` (``operations.py``): its handler, the scope a key needs, the
query parameters it takes and the JSON it reads and answers. The same table routes requests,
checks keys and query parameters, and is ``/openapi.json`` (browsable at ``/docs``). Bodies
must be declared JSON and are read by ``body.py``; every refusal is RFC 9457 problem details
(``problems.py``), never a traceback. Keys and scopes: ``auth.py``. Times are RFC 3339 in UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from tidings.server.auth import Keys
from tidings.server.body import EVENT_TYPES
from tidings.server.browse import Browse
from tidings.server.cursors import Cursors
from tidings.server.dashboard.pages import Dashboard
from tidings.server.handlers import STATES, Api
from tidings.server.jsonio import reply
from tidings.server.keys_api import KeysApi
from tidings.server.keys_db import open_keys
from tidings.server.openapi import docs_page, document
from tidings.server.operations import Operation, routes
from tidings.server.params import CURSOR, LIMIT, Param
from tidings.server.problems import exception_handlers
from tidings.server.replays import Replays
from tidings.server.schemas import (
    AcceptedOut,
    ApiKeyIn,
    ApiKeyOut,
    ApiKeyPage,
    DeliveryOut,
    DeliveryPage,
    EndpointIn,
    EndpointPage,
    EventIn,
    EventPage,
    ReplayIn,
    ReplayJob,
    ReplayPage,
    StoredEventOut,
    StreamList,
    StreamPage,
    SubscriptionPage,
)
from tidings.server.service import Service
from tidings.server.stream import Hub, stream_operations
from tidings.server.triggers_api import TriggersApi, trigger_operations

__all__ = ["create_app", "operations"]

_TEXT = {"type": "string", "maxLength": 1024}
_TIME = {"type": "string", "format": "date-time"}
EVENT_QUERY = (
    Param("type", _TEXT, "Event type or glob pattern (`order.*`, `**`); repeat for several.",
          multi=True),
    Param("stream", _TEXT, "Only events appended to this stream."),
    Param("since", _TIME, "Events at or after this time (RFC 3339)."),
    Param("until", _TIME, "Events before this time (RFC 3339)."),
    Param("correlation_id", _TEXT, "Only events with this correlation id."),
    Param("aggregate_id", _TEXT, "Only events of this aggregate."),
    Param("after", {"type": "integer", "minimum": 0}, "Only events after this store position."),
    LIMIT,
    CURSOR,
)  # fmt: skip
_STATE = {"type": "string", "enum": list(STATES)}
DELIVERY_FILTERS = (
    Param("event_id", _TEXT, "Only deliveries of this event."),
    Param("before", _TEXT, "Only deliveries older than this delivery id."),
    LIMIT,
    CURSOR,
)
PAGE = (LIMIT, CURSOR)


def operations(service: Service, keys: Keys, replays: Replays) -> list[Operation]:
    """Every route of the API, as served and as ``/openapi.json`` describes it."""
    api = Api(service)
    browse = Browse(service)
    keys_api = KeysApi(service, keys, service.settings.server.max_body_bytes)
    ops: list[Operation] = []

    def op(method: str, path: str, handler: object, scope: str | None, summary: str, tag: str,
           **kw: object) -> None:  # fmt: skip
        ops.append(Operation(method, path, handler, scope, summary, tag, **kw))  # type: ignore[arg-type]

    op("POST", "/events", api.post_events, "publish", "Publish one event or a batch", "events",
       body=EventIn | list[EventIn], body_types=EVENT_TYPES, ok=202, answer=AcceptedOut,
       errors=(409, 413, 415, 503))  # fmt: skip
    op("GET", "/events", api.get_events, "read", "Query stored events, oldest first", "events",
       query=EVENT_QUERY, answer=EventPage, errors=(503,))  # fmt: skip
    op("GET", "/events/{id}", api.get_event, "read", "One stored event, by id or store position",
       "events", answer=StoredEventOut, errors=(404,))  # fmt: skip
    op("GET", "/streams", browse.list_streams, "read", "Streams by name, with their versions",
       "events", query=PAGE, answer=StreamList, errors=(503,))  # fmt: skip
    op("GET", "/streams/{stream}", browse.get_stream, "read", "A stream's version and events",
       "events", query=PAGE, answer=StreamPage, errors=(404, 503))  # fmt: skip
    op("GET", "/subscriptions", browse.list_subscriptions, "read",
       "Store subscriptions with positions and lag", "events", query=PAGE,
       answer=SubscriptionPage)  # fmt: skip
    op("GET", "/endpoints", api.list_endpoints, "read", "Webhook endpoints", "endpoints",
       query=PAGE, answer=EndpointPage)  # fmt: skip
    op("POST", "/endpoints", api.create_endpoint, "admin", "Register an endpoint", "endpoints",
       body=EndpointIn, ok=201, errors=(413, 415, 422))  # fmt: skip
    op("GET", "/endpoints/{id}", api.get_endpoint, "read", "One endpoint", "endpoints",
       errors=(404,))  # fmt: skip
    op("PATCH", "/endpoints/{id}", api.update_endpoint, "admin", "Change an endpoint",
       "endpoints", body=EndpointIn, errors=(404, 413, 415, 422))  # fmt: skip
    op("DELETE", "/endpoints/{id}", api.delete_endpoint, "admin",
       "Delete an endpoint (its open deliveries are cancelled)", "endpoints", ok=204,
       errors=(404,))  # fmt: skip
    op("POST", "/endpoints/{id}/disable", api.disable_endpoint, "admin", "Stop delivering",
       "endpoints", errors=(404,))  # fmt: skip
    op("POST", "/endpoints/{id}/enable", api.enable_endpoint, "admin", "Deliver again",
       "endpoints", errors=(404,))  # fmt: skip
    op("POST", "/endpoints/{id}/rotate-secret", api.rotate_secret, "admin",
       "New signing secret (shown once; the previous one keeps signing)", "endpoints",
       errors=(404,))  # fmt: skip
    op("GET", "/endpoints/{id}/deliveries", api.list_deliveries, "read",
       "An endpoint's deliveries, newest first", "deliveries",
       query=(Param("state", _STATE, "Only deliveries in this state."), *DELIVERY_FILTERS),
       answer=DeliveryPage)  # fmt: skip
    op("POST", "/endpoints/{id}/retry-dead", api.retry_dead, "admin",
       "Send an endpoint's dead deliveries again", "deliveries", ok=202,
       errors=(404,))  # fmt: skip
    op("GET", "/deliveries", api.list_deliveries, "read", "Deliveries, newest first",
       "deliveries",
       query=(Param("state", _STATE, "Only deliveries in this state."),
              Param("endpoint_id", _TEXT, "Only deliveries to this endpoint."),
              *DELIVERY_FILTERS),
       answer=DeliveryPage)  # fmt: skip
    op("GET", "/dlq", api.list_deliveries, "read", "Dead deliveries (the DLQ), newest first",
       "deliveries",
       query=(Param("endpoint_id", _TEXT, "Only deliveries to this endpoint."),
              *DELIVERY_FILTERS),
       answer=DeliveryPage)  # fmt: skip
    op("GET", "/deliveries/{id}", api.get_delivery, "read", "One delivery with its attempts",
       "deliveries", answer=DeliveryOut, errors=(404,))  # fmt: skip
    op("POST", "/deliveries/{id}/retry", api.retry_delivery, "admin",
       "Send a delivery again (same message id)", "deliveries", ok=202,
       errors=(404,))  # fmt: skip
    op("POST", "/replays", replays.create, "admin", "Start a replay job", "replays",
       body=ReplayIn, ok=202, answer=ReplayJob, errors=(413, 415))  # fmt: skip
    op("GET", "/replays", replays.list, "admin", "Replay jobs, newest first", "replays",
       query=PAGE, answer=ReplayPage)  # fmt: skip
    op("GET", "/replays/{id}", replays.get, "admin", "A replay job and its progress",
       "replays", answer=ReplayJob, errors=(404,))  # fmt: skip
    op("POST", "/replay", api.replay, "admin",
       "Replay at once, all or nothing (or a dry run); prefer POST /replays", "replays",
       body=ReplayIn, ok=202, errors=(413, 415, 503))  # fmt: skip
    op("GET", "/api-keys", keys_api.list_keys, "admin", "API keys (never the keys themselves)",
       "keys", query=PAGE, answer=ApiKeyPage)  # fmt: skip
    op("POST", "/api-keys", keys_api.create_key, "admin", "Make an API key (shown once)", "keys",
       body=ApiKeyIn, ok=201, answer=ApiKeyOut, errors=(409, 413, 415))  # fmt: skip
    op("DELETE", "/api-keys/{id}", keys_api.delete_key, "admin", "Revoke an API key", "keys",
       ok=204, errors=(404, 409))  # fmt: skip
    op("GET", "/health", api.health, None, "Queue, worker, store and source health",
       "operations", errors=(503,))  # fmt: skip
    op("GET", "/metrics", api.metrics, "read", "Prometheus metrics", "operations",
       answer_type="text/plain")  # fmt: skip
    return ops


def create_app(service: Service, *, manage_lifecycle: bool = True) -> Starlette:
    """The ASGI app for ``service`` (started and stopped with the app unless told not to)."""
    keys = Keys(lambda: service.settings.server, open_keys(service.store))
    replays = Replays(service, service.settings.server.max_body_bytes)
    triggers = TriggersApi(service, service.settings.server.max_body_bytes)
    ops = operations(service, keys, replays)
    ops.extend(trigger_operations(triggers))
    hub = Hub(service.store)
    stream_ops, stream_routes = stream_operations(hub)
    ops[0:0] = stream_ops  # /events/stream before /events/{id} (the first path that fits wins)
    ops = [  # streams see accepted events at once, not at the next poll of the store
        dataclasses.replace(o, handler=hub.waking(o.handler)) if o.path == "/events" and
        o.method == "POST" else o for o in ops
    ]  # fmt: skip
    dashboard = Dashboard(service, Api(service))  # pages, not API operations: not in the spec
    spec: dict[str, object] = {}

    async def openapi_json(request: Request) -> Response:
        return reply(spec["doc"])

    async def docs(request: Request) -> Response:
        return HTMLResponse(spec["page"])

    ops.append(Operation("GET", "/openapi.json", openapi_json, None,
                         "This description (OpenAPI 3.1)", "operations"))  # fmt: skip
    ops.append(Operation("GET", "/docs", docs, None, "This description as a page",
                         "operations", answer_type="text/html"))  # fmt: skip
    doc = document(ops)
    spec["doc"], spec["page"] = doc, docs_page(doc)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not manage_lifecycle:
            yield
            return
        await keys.refresh()  # first: a failure leaves nothing started
        await service.start()
        dashboard.start()
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
            hub.close()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await dashboard.stop()
            await replays.stop()
            await triggers.close()
            await service.stop()

    app = Starlette(
        routes=[*routes(ops, keys), *stream_routes, *dashboard.routes()],
        lifespan=lifespan,
        exception_handlers=exception_handlers(),
    )
    app.state.tidings_keys = keys
    app.state.tidings_cursors = Cursors()
    app.state.tidings_service = service
    app.state.tidings_triggers = triggers
    app.state.tidings_hub = hub
    return app
