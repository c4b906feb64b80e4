"""The dashboard's routes: pages (GET, key ``read``) and buttons (POST, key ``admin``, CSRF).

Pages are rendered by Jinja2 with autoescape on, so nothing that arrives (an event's type or
data, an endpoint's URL, a query) is ever markup. Ids in paths are checked (length, characters)
before they reach the store; a page for something unknown is a 404 page. Buttons act through
the service as the HTTP API does (the same ``Api`` handlers where one exists), then send the
browser back to the page it came from (303), except "rotate secret", whose page shows the new
secret once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

import jinja2
import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from tidings.server.auth import Principal
from tidings.server.body import ApiError
from tidings.server.dashboard import session
from tidings.server.dashboard.charts import Sampler
from tidings.server.dashboard.figures import endpoint_health, event_view, recent_events
from tidings.server.handlers import Api
from tidings.server.service import Service
from tidings.topics import PatternError, compile_pattern

__all__ = ["Dashboard"]

_ID = re.compile(r"[A-Za-z0-9_.:~@+-]{1,200}")
MAX_PATTERN = 200
DONE = {  # what a button did, as the page says it after the redirect
    "disabled": "Endpoint disabled: nothing is sent to it until it is enabled.",
    "enabled": "Endpoint enabled: its pending deliveries are sent again.",
    "retried": "Delivery queued again (same message id).",
    "retried-dead": "Dead deliveries queued again.",
}
STATIC = {"dashboard.css": "text/css", "feed.js": "text/javascript"}

Page = Callable[[Request], Awaitable[Response]]


def _checked_id(value: str, what: str) -> str:
    if not _ID.fullmatch(value):
        raise ApiError(400, f"{what}: expected 1-200 letters, digits or _.:~@+-", what)
    return value


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f}%"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tidings.server.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(ago=_ago, when=_when, pct=_pct, path=lambda v: quote(str(v), safe=""))
    return env


class Dashboard:
    """The pages of one app; ``routes()`` for Starlette, ``start``/``stop`` with the app."""

    def __init__(self, service: Service, api: Api) -> None:
        self.service = service
        self.api = api
        self.sampler = Sampler(service)
        self.env = _environment()
        self.static = {
            name: resources.files("tidings.server.dashboard").joinpath("static", name).read_bytes()
            for name in STATIC
        }

    def start(self) -> None:
        self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()

    def routes(self) -> list[Route]:
        page, button = self._page, self._button
        return [
            Route("/", page(self.overview), methods=["GET"]),
            Route("/ui/events/{position:int}", page(self.event), methods=["GET"]),
            Route("/ui/endpoints", page(self.endpoints), methods=["GET"]),
            Route("/ui/endpoints/{id}", page(self.endpoint), methods=["GET"]),
            Route("/ui/endpoints/{id}/{action}", button(self.endpoint_action), methods=["POST"]),
            Route("/ui/deliveries/{id}", page(self.delivery), methods=["GET"]),
            Route("/ui/deliveries/{id}/retry", button(self.retry_delivery), methods=["POST"]),
            Route("/ui/login", self.login_form, methods=["GET"]),
            Route("/ui/login", self.login, methods=["POST"]),
            Route("/ui/logout", self.logout, methods=["POST"]),
            Route("/ui/static/{name}", self.asset, methods=["GET"]),
        ]

    # ---- rendering -------------------------------------------------------------------------

    def render(
        self, request: Request, template: str, status: int = 200, who: Principal | None = None,
        **context: Any,
    ) -> Response:  # fmt: skip
        token = session.csrf_token(request)
        keys = request.app.state.tidings_keys
        html = self.env.get_template(template).render(
            csrf=token, who=who, login=keys.required(), path=request.url.path, **context
        )
        response = HTMLResponse(html, status, headers=_HEADERS)
        session.keep_csrf(request, response, token)
        return response

    def _error(self, request: Request, exc: ApiError, who: Principal | None = None) -> Response:
        return self.render(request, "error.html", exc.status, who=who, error=exc)

    def _page(self, handler: Callable[[Request, Principal], Awaitable[Response]]) -> Page:
        async def page(request: Request) -> Response:
            try:
                who = await session.viewer(request, "read")
            except ApiError as exc:
                if exc.status == 401:
                    return RedirectResponse("/ui/login", 303, headers=_HEADERS)
                return self._error(request, exc)
            try:
                return await handler(request, who)
            except ApiError as exc:
                return self._error(request, exc, who)

        return page

    def _button(
        self, handler: Callable[[Request, Principal, session.Form], Awaitable[Response]]
    ) -> Page:
        async def button(request: Request) -> Response:
            who: Principal | None = None
            try:
                form = await session.posted_form(request)
                who = await session.viewer(request, "admin")
                return await handler(request, who, form)
            except ApiError as exc:
                return self._error(request, exc, who)

        return button

    # ---- pages -----------------------------------------------------------------------------

    async def overview(self, request: Request, who: Principal) -> Response:
        pattern = request.query_params.get("pattern", "").strip() or None
        problem = None
        if pattern is not None:
            try:
                if len(pattern) > MAX_PATTERN:
                    raise PatternError(f"at most {MAX_PATTERN} characters")
                compile_pattern(pattern)
            except PatternError as exc:
                problem, pattern = f"pattern: {exc}", None
        events = await asyncio.to_thread(recent_events, self.service, pattern)
        head = await asyncio.to_thread(self.service.store.head)
        healthy, health = await self.service.health()
        triggers: dict[str, Any] | None = None
        if self.service.triggers is not None:
            try:
                triggers = await asyncio.to_thread(self.service.triggers.health)
            except Exception as exc:  # shown, not raised: the rest of the page still helps
                triggers = {"ok": False, "errors": {"processor": str(exc)}}
        return self.render(
            request, "overview.html", 400 if problem else 200, who=who, pattern=pattern or "",
            problem=problem, events=events, head=head, health=health, healthy=healthy,
            charts=await self.sampler.charts(),
            subscriptions=self.service.store.subscriptions(), triggers=triggers,
        )  # fmt: skip

    async def event(self, request: Request, who: Principal) -> Response:
        position = int(request.path_params["position"])
        view = await asyncio.to_thread(event_view, self.service, position)
        if view is None:
            raise ApiError(404, f"no event at store position {position}")
        return self.render(request, "event.html", who=who, view=view)

    async def endpoints(self, request: Request, who: Principal) -> Response:
        stats = await self.service.queue.astats()
        rows = await asyncio.to_thread(endpoint_health, self.service, stats)
        return self.render(request, "endpoints.html", who=who, rows=rows, stats=stats)

    async def endpoint(self, request: Request, who: Principal) -> Response:
        endpoint_id = _checked_id(request.path_params["id"], "endpoint id")
        stats = await self.service.queue.astats()
        rows = await asyncio.to_thread(endpoint_health, self.service, stats, endpoint_id)
        if not rows:
            raise ApiError(404, f"no endpoint {endpoint_id!r}")
        queue = self.service.queue
        dead = await asyncio.to_thread(
            queue.deliveries, endpoint_id=endpoint_id, state="dead", limit=50
        )
        latest = await asyncio.to_thread(queue.deliveries, endpoint_id=endpoint_id, limit=20)
        done = DONE.get(request.query_params.get("done", ""))
        return self.render(
            request, "endpoint.html", who=who, h=rows[0], dead=dead, latest=latest, done=done,
            public=rows[0].endpoint.public(),
        )  # fmt: skip

    async def delivery(self, request: Request, who: Principal) -> Response:
        delivery_id = _checked_id(request.path_params["id"], "delivery id")
        queue = self.service.queue
        delivery = await asyncio.to_thread(queue.delivery, delivery_id)
        if delivery is None:
            raise ApiError(404, f"no delivery {delivery_id!r}")
        attempts = await asyncio.to_thread(queue.attempts, delivery_id)
        return self.render(request, "delivery.html", who=who, d=delivery, attempts=attempts)

    # ---- buttons ---------------------------------------------------------------------------

    async def _call(self, handler: Page, request: Request) -> dict[str, Any]:
        """An API handler's answer as data (``ApiError`` passes through)."""
        response = await handler(request)
        data: dict[str, Any] = msgspec.json.decode(response.body)
        return data

    async def endpoint_action(
        self, request: Request, who: Principal, form: session.Form
    ) -> Response:
        endpoint_id = _checked_id(request.path_params["id"], "endpoint id")
        action = request.path_params["action"]
        handlers: dict[str, tuple[Page, str]] = {
            "disable": (self.api.disable_endpoint, "disabled"),
            "enable": (self.api.enable_endpoint, "enabled"),
            "retry-dead": (self.api.retry_dead, "retried-dead"),
            "rotate-secret": (self.api.rotate_secret, ""),
        }
        if action not in handlers:
            raise ApiError(404, f"no button {action!r}: expected one of {', '.join(handlers)}")
        handler, done = handlers[action]
        answer = await self._call(handler, request)
        if action == "rotate-secret":  # shown once, now: not in a URL, not cached
            return self.render(
                request, "secret.html", who=who, endpoint_id=endpoint_id, secret=answer["secret"]
            )
        return RedirectResponse(
            f"/ui/endpoints/{quote(endpoint_id, safe='')}?done={done}", 303, headers=_HEADERS
        )

    async def retry_delivery(
        self, request: Request, who: Principal, form: session.Form
    ) -> Response:
        delivery_id = _checked_id(request.path_params["id"], "delivery id")
        delivery = await asyncio.to_thread(self.service.queue.delivery, delivery_id)
        if delivery is None:
            raise ApiError(404, f"no delivery {delivery_id!r}")
        await self._call(self.api.retry_delivery, request)
        target = quote(delivery.endpoint_id, safe="")
        return RedirectResponse(f"/ui/endpoints/{target}?done=retried", 303, headers=_HEADERS)

    # ---- login -----------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return self.render(request, "login.html", error=None)

    async def login(self, request: Request) -> Response:
        try:
            form = await session.posted_form(request)
        except ApiError as exc:
            return self._error(request, exc)
        key = form.get("key", "")
        keys = request.app.state.tidings_keys
        started = time.monotonic()
        try:
            if len(key) > session.MAX_KEY:
                raise ApiError(401, "wrong key", "key")
            await keys.authenticate(key)
        except ApiError:
            await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))  # no fast guessing
            return self.render(
                request, "login.html", 401,
                error="That key is not valid here. Use an API key of this server (scope read "
                "or more).",
            )  # fmt: skip
        response = RedirectResponse("/", 303, headers=_HEADERS)
        if keys.required():
            session.keep_key(request, response, key)
        return response

    async def logout(self, request: Request) -> Response:
        try:
            await session.posted_form(request)
        except ApiError as exc:
            return self._error(request, exc)
        response = RedirectResponse("/ui/login", 303, headers=_HEADERS)
        session.clear_key(request, response)
        return response

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return Response("not found", 404, media_type="text/plain")
        return Response(
            self.static[name], media_type=STATIC[name],
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )  # fmt: skip


# No caching (pages carry secrets once and tokens), no framing (clickjacking a button), and
# nothing but this origin's own scripts and styles.
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}
