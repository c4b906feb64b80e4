"""URL helpers shared by every backend: one way to keep passwords out of logs and errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = ["MASK", "is_secret_name", "redact_mapping", "redact_url"]

MASK = "***"

# Query parameters (and config keys) that carry a credential in the drivers tidings speaks:
# libpq (password, sslpassword), redis-py, nats, aiokafka (sasl_*), AMQP, cloud SDKs.
_SECRET_NAMES = frozenset(
    {"pass", "passwd", "pwd", "key", "apikey", "accesskey", "auth", "authorization", "creds"}
)
# Anything whose name contains one of these is a secret too: sasl_plain_password, x-api-token...
_SECRET_PARTS = ("password", "passwd", "secret", "token", "credential")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


def is_secret_name(name: str) -> bool:
    """True for a parameter or key name that holds a credential (case-insensitive).

    ``key`` counts as a whole word (``api_key``, ``access-key``), not inside other words
    (``keepalives``, ``monkey``).
    """
    lowered = name.lower()
    if lowered in _SECRET_NAMES or any(part in lowered for part in _SECRET_PARTS):
        return True
    return "key" in _WORD_SPLIT.split(lowered)


def _redact_query(query: str) -> str:
    if not query:
        return query
    out = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        secret = eq and value and is_secret_name(unquote_plus(name))
        out.append(f"{name}={MASK}" if secret else item)
    return "&".join(out)


# libpq's keyword form ("host=db password='x y'"), which users paste where a URL belongs.
_KEYWORD = re.compile(r"""([A-Za-z_][\w-]*)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)""")


def _redact_keywords(text: str) -> str:
    return _KEYWORD.sub(
        lambda m: f"{m[1]}{m[2]}{MASK}" if is_secret_name(m[1]) else m[0],
        text,
    )


def redact_url(url: str) -> str:
    """``url`` with its password and every credential-bearing query parameter (``password``,
    ``sslpassword``, ``token``, ``secret``, ``api_key``, ...) replaced by ``***``: safe for
    messages, logs and ``/health``. Text without ``://`` is redacted as libpq keywords."""
    if "://" not in url:
        return _redact_keywords(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}")
    query = _redact_query(parts.query)
    if password is None and query == parts.query:
        return url  # untouched, byte for byte
    return urlunsplit(parts._replace(query=query))


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a settings mapping safe to print: secret-named keys masked, URLs redacted,
    nested mappings and lists likewise."""
    return {
        key: MASK if is_secret_name(str(key)) and value is not None else _redact_value(value)
        for key, value in values.items()
    }


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value
