"""Who looks at the dashboard, and what a button must carry.

With API keys configured, the login form checks a key like the API does (``auth.Keys``) and
keeps it in a cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over https, ``Path=/``):
``auth.given_key`` accepts that cookie on GET requests (pages, ``/events/stream``). Without keys
(a loopback server) everyone is ``anonymous`` and there is no login.

Every POST (a button) must carry a CSRF token equal to the ``tidings_csrf`` cookie (double
submit: a page of another site can neither read the cookie nor make the browser send it, being
``SameSite=Strict``) and come from the dashboard's own origin (``Origin`` / ``Referer`` /
``Sec-Fetch-Site``). Form bodies are read here, bounded, without a multipart library.
"""

from __future__ import annotations

import hmac
import re
import secrets
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from tidings.server.auth import KEY_COOKIE, Principal, Scope, require
from tidings.server.body import ApiError

__all__ = [
    "CSRF_COOKIE",
    "KEY_COOKIE",
    "Form",
    "clear_key",
    "csrf_token",
    "keep_csrf",
    "keep_key",
    "posted_form",
    "read_form",
    "viewer",
]

CSRF_COOKIE = "tidings_csrf"
CSRF_FIELD = "csrf"
MAX_FORM = 16 * 1024  # bytes of a form body: a key, a token and a few ids
MAX_KEY = 1024
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")

Form = dict[str, str]


async def viewer(request: Request, scope: Scope) -> Principal:
    """The principal of the dashboard's cookie (401 ``ApiError`` without a valid one when keys
    are configured; 403 when its key lacks ``scope``)."""
    return await require(request, scope, key=request.cookies.get(KEY_COOKIE, "")[:MAX_KEY])


def csrf_token(request: Request) -> str:
    """The browser's CSRF token (its cookie), or a new one that ``keep_csrf`` then sets."""
    given = request.cookies.get(CSRF_COOKIE, "")
    return given if _TOKEN.fullmatch(given) else secrets.token_urlsafe(32)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def keep_csrf(request: Request, response: Response, token: str) -> None:
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(
            CSRF_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/"
        )


def keep_key(request: Request, response: Response, key: str) -> None:
    response.set_cookie(
        KEY_COOKIE, key, httponly=True, samesite="strict", secure=_secure(request), path="/"
    )


def clear_key(request: Request, response: Response) -> None:
    response.delete_cookie(
        KEY_COOKIE, httponly=True, samesite="strict", secure=_secure(request), path="/"
    )


async def read_form(request: Request) -> Form:
    """A URL-encoded form body, at most ``MAX_FORM`` bytes and one value per field."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/x-www-form-urlencoded", ""):
        raise ApiError(415, "expected a form (application/x-www-form-urlencoded)", "Content-Type")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise ApiError(413, f"form body over {MAX_FORM} bytes", "body")
    if kind == "" and body:
        raise ApiError(415, "expected a form (application/x-www-form-urlencoded)", "Content-Type")
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=20, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"unreadable form: {exc}", "body") from None
    return {name: values[0] for name, values in fields.items()}


def _same_origin(request: Request) -> bool:
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own
    referer = request.headers.get("referer")
    if referer is not None:
        return referer == own or referer.startswith(own + "/")
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


async def posted_form(request: Request) -> Form:
    """A button's form: from this origin, with the CSRF token of the cookie (403 if not)."""
    if not _same_origin(request):
        raise ApiError(403, "cross-origin request refused: use the dashboard's own pages", "Origin")
    form = await read_form(request)
    cookie = request.cookies.get(CSRF_COOKIE, "")
    token = form.get(CSRF_FIELD, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), token.encode()):
        raise ApiError(
            403,
            "missing or wrong CSRF token: reload the page and press the button again",
            CSRF_FIELD,
        )
    return form
