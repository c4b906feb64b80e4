"""The NATS URL as logs and errors may show it (no credentials)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from tidings.urls import redact_url


def _redact(url: str) -> str:
    """NATS puts a token or a user alone in the userinfo, so all of it goes; the query's
    credential parameters too (``redact_url``)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return redact_url(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return redact_url(urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, "")))
