"""The route table of the HTTP API: one ``Operation`` per method and path, and the routes made
from it.

An operation is the one place a route is described: its handler, the scope a key needs, the
query parameters it takes (checked on every request: ``server/params.py``), its request body
and answers (msgspec types, turned into JSON Schema for ``/openapi.json``). The guard around
every handler checks the key, then the query, then maps refusals to problem details; so what
``/openapi.json`` says and what the server does come from the same objects.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.server.auth import Keys, Scope, given_key, require
from tidings.server.body import JSON_TYPES, ApiError
from tidings.server.params import Param, Query
from tidings.server.problems import problem
from tidings.store.base import DuplicateEvent, StoreError
from tidings.webhooks.queue import WebhookQueueFull

__all__ = ["Handler", "Operation", "query", "routes"]

log = logging.getLogger("tidings.server")

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path, as served and as documented."""

    method: str
    path: str
    handler: Handler
    scope: Scope | None  # None: open to anyone (health, the API description)
    summary: str
    tag: str
    query: tuple[Param, ...] = ()
    body: Any = None  # a msgspec type describing the JSON body (None: no body)
    body_types: tuple[str, ...] = JSON_TYPES
    ok: int = 200
    answer: Any = None  # a msgspec type describing the success body (None: no schema)
    answer_type: str = "application/json"
    errors: tuple[int, ...] = ()  # the 4xx/5xx it may answer besides 400, 401, 403 and 500
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # more OpenAPI keys, as they are

    @property
    def operation_id(self) -> str:
        """``get_endpoints_id_deliveries``: unique per method and path, as OpenAPI wants."""
        words = re.findall(r"[a-z0-9]+", self.path.lower())
        return "_".join([self.method.lower(), *words]) if words else self.method.lower()


def query(request: Request) -> Query:
    """The checked query parameters of ``request`` (set by the guard of its operation)."""
    checked: Query = request.state.query
    return checked


def _guarded(op: Operation, keys: Keys) -> Handler:
    """Key and scope, then query parameters, then the handler; refusals as problem details."""

    async def wrapper(request: Request) -> Response:
        try:
            if op.scope is not None:
                request.state.principal = await keys.authenticate(given_key(request))
                await require(request, op.scope)
            request.state.query = Query(request, op.query)
            return await op.handler(request)
        except ApiError as exc:
            return exc.response()
        except WebhookQueueFull as exc:
            return problem(503, str(exc), kind="queue-full")
        except DuplicateEvent as exc:  # the client's input, not the store's health
            return problem(409, str(exc), "id", kind="duplicate-event")
        except StoreError as exc:
            log.error("store error on %s %s: %s", request.method, request.url.path, exc)
            return problem(503, f"the store is not available: {exc}", kind="store-unavailable")

    wrapper.__name__ = op.operation_id
    return wrapper


def routes(operations: Sequence[Operation], keys: Keys) -> list[Route]:
    """One Starlette route per path, dispatching on the method: a method the path does not
    take is then a 405 whose ``Allow`` lists every method it does."""
    by_path: dict[str, dict[str, Handler]] = {}
    for op in operations:
        by_path.setdefault(op.path, {})[op.method] = _guarded(op, keys)
    out = []
    for path, handlers in by_path.items():

        async def endpoint(request: Request, handlers: dict[str, Handler] = handlers) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await handlers[method](request)

        out.append(Route(path, endpoint, methods=list(handlers)))
    return out
