"""Which headers a webhook endpoint may add to its requests (its ``headers`` and ``auth``).

Ground floor, so the config loader and the HTTP API refuse the same things with the same words:
a bad header would otherwise be accepted at registration and fail in the sender, or quietly
replace a header that tidings or the HTTP client sets (a forged ``webhook-signature``, a second
``Host``). Messages never show a value: header and auth values are often secrets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

__all__ = ["AUTH_FORMS", "AuthFields", "Problem", "header_name_problem", "headers_problem"]

# (key path under the endpoint, what is wrong): ("headers", "X-A") or ("auth", "bearer")
Problem = tuple[tuple[str, ...], str]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a field name is a token (RFC 9110 5.1)
# Field values are visible ASCII, spaces, tabs and obs-text (RFC 9110 5.5): no other controls.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_NAMES = {"\r": "CR (\\r)", "\n": "LF (\\n)", "\0": "NUL"}

_FRAMING = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
     "te", "trailer", "proxy-connection"}
)  # fmt: skip
_BODY = frozenset({"content-type", "content-encoding"})
_SIGNATURE = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})
_TIDINGS = frozenset({"tidings-event-id", "tidings-event-type", "tidings-attempt", "user-agent"})

AUTH_FORMS = (("bearer",), ("username", "password"), ("header", "value"))


class AuthFields(Protocol):
    """An endpoint's ``auth``, from the config file or the API: one of its three forms."""

    @property
    def bearer(self) -> str | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def header(self) -> str | None: ...
    @property
    def value(self) -> str | None: ...


def header_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a header an endpoint adds, or None if it can."""
    if not _TOKEN.fullmatch(name):
        return (
            "expected an HTTP header name: letters, digits and !#$%&'*+-.^_`|~, without spaces "
            f"or colons, got {name!r}"
        )
    lower = name.lower()
    if lower in _FRAMING:
        return f"{name!r} is set by the HTTP client for each request; leave it out"
    if lower in _BODY:
        return f"{name!r} follows from the endpoint's format and compress settings; leave it out"
    if lower in _SIGNATURE:
        return (
            f"{name!r} is one of the Standard Webhooks signature headers that tidings sets on "
            "every request; leave it out"
        )
    if lower in _TIDINGS:
        return f"{name!r} is set by tidings on every request; leave it out"
    if lower.startswith("ce-"):
        return (
            f"{name!r}: ce-* headers carry the event's CloudEvents attributes (format "
            "cloudevents-binary); leave it out"
        )
    return None


def _value_problem(value: str) -> str | None:
    found = _CONTROL.search(value)
    if found is None:
        return None
    char = found.group()
    shown = _CONTROL_NAMES.get(char, f"control character U+{ord(char):04X}")
    return (
        "a header value cannot hold line breaks, NUL or other control characters (tabs are "
        f"fine); found {shown} at position {found.start()} (the value is not shown)"
    )


def headers_problem(headers: Mapping[str, str], auth: AuthFields | None) -> Problem | None:
    """The first thing wrong with what an endpoint adds to each request, or None.

    ``headers`` names are case-insensitive tokens that tidings and the HTTP client do not set
    themselves; values and ``auth`` values hold no control characters (a CR or LF would split
    the request); ``auth`` is exactly one of its forms and not given twice through ``headers``.
    """
    for name, value in headers.items():
        problem = header_name_problem(name) or _value_problem(value)
        if problem is not None:
            return ("headers", name), problem
    if auth is None:
        return None
    chosen = [f for f in AUTH_FORMS if any(getattr(auth, k) is not None for k in f)]
    if len(chosen) != 1 or any(getattr(auth, k) is None for k in chosen[0]):
        given = [k for form in AUTH_FORMS for k in form if getattr(auth, k) is not None]
        return ("auth",), (
            "expected exactly one of {bearer}, {username, password} or {header, value}, "
            f"got {', '.join(given) or 'no keys'}"
        )
    if auth.header is not None:
        problem = header_name_problem(auth.header)
        if problem is not None:
            return ("auth", "header"), problem
    for key in ("bearer", "username", "password", "value"):
        value = getattr(auth, key)
        problem = None if value is None else _value_problem(value)
        if problem is not None:
            return ("auth", key), problem
    if auth.username is not None and ":" in auth.username:
        return ("auth", "username"), (
            "expected a user name without ':' (basic auth splits user and password at the "
            "first colon)"
        )
    sets = (auth.header or "").lower() if chosen[0] == ("header", "value") else "authorization"
    for name in headers:
        if name.lower() == sets:
            return ("headers", name), f"{name!r} is also set by auth; give it in one place"
    return None
