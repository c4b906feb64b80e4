"""The PostgreSQL transport's URL and keyword options, parsed and checked once."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from tidings.transport import TransportError
from tidings.transports.common import Options
from tidings.urls import redact_url

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_OPT = Options("PostgreSQL transport")
# Options this transport reads from the URL query (and keywords), each with its reader; every
# other query parameter goes to libpq.
_URL_OPTIONS: dict[str, Callable[[str, Any], Any]] = {
    "schema": lambda _name, value: str(value),
    "channel": lambda _name, value: str(value),
    "poll_interval": _OPT.duration,
    "batch_size": _OPT.integer,
    "retention": _OPT.number,  # 0 or less: keep forever
    "housekeeping_interval": _OPT.duration,
    "broadcast_ttl": _OPT.duration,
    "pool_size": _OPT.integer,
    "connect_timeout": _OPT.duration,
    "reconnect_timeout": _OPT.number,
}


@dataclass(frozen=True, slots=True)
class _Settings:
    conninfo: str
    redacted: str
    where: str  # host:port, for error messages
    schema: str
    channel: str
    poll_interval: float
    batch_size: int
    retention: float | None
    housekeeping_interval: float
    broadcast_ttl: float
    pool_size: int
    connect_timeout: float
    reconnect_timeout: float
    application_name: str


def _parse(url: str, options: dict[str, Any]) -> _Settings:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise TransportError(
            f"PostgreSQL transport: expected a postgresql:// URL, got {parts.scheme!r}"
        )
    ours: dict[str, Any] = {}
    libpq: list[tuple[str, str]] = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _URL_OPTIONS:
            ours[k] = _URL_OPTIONS[k](k, v)
        else:
            libpq.append((k, v))
    _OPT.unknown(options, [*_URL_OPTIONS, "application_name", "on_error"])
    ours.update({k: _URL_OPTIONS[k](k, v) for k, v in options.items() if k in _URL_OPTIONS})
    app = options.get("application_name") or dict(libpq).get("application_name")
    if not app:
        app = f"tidings-transport-{uuid.uuid4().hex[:8]}"
    libpq = [(k, v) for k, v in libpq if k != "application_name"]
    libpq.append(("application_name", app))
    schema = ours.get("schema", "tidings_queue")
    if not _SCHEMA_RE.match(schema):
        raise TransportError(
            f"PostgreSQL transport: schema {schema!r} must be lower-case letters, digits and "
            "underscores, starting with a letter or underscore (at most 63 characters)"
        )
    channel = ours.get("channel") or f"tidings_q_{schema}"[:63]
    if not _SCHEMA_RE.match(channel):
        raise TransportError(
            f"PostgreSQL transport: channel {channel!r} must be lower-case letters, digits and "
            "underscores, starting with a letter or underscore (at most 63 characters)"
        )
    retention = float(ours.get("retention", 7 * 86400.0))
    host = unquote(parts.hostname or "localhost")
    where = f"{host}:{parts.port or 5432}"
    conninfo = urlunsplit(parts._replace(query=urlencode(libpq)))
    return _Settings(
        conninfo=conninfo,
        redacted=redact_url(url),
        where=where,
        schema=schema,
        channel=channel,
        poll_interval=float(ours.get("poll_interval", 1.0)),
        batch_size=int(ours.get("batch_size", 256)),
        retention=retention if retention > 0 else None,
        housekeeping_interval=float(ours.get("housekeeping_interval", 60.0)),
        broadcast_ttl=float(ours.get("broadcast_ttl", 3600.0)),
        pool_size=int(ours.get("pool_size", 4)),
        connect_timeout=float(ours.get("connect_timeout", 5.0)),
        reconnect_timeout=float(ours.get("reconnect_timeout", 30.0)),
        application_name=app,
    )
