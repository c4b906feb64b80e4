"""URL helpers shared by every backend: one way to keep passwords out of logs and errors."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = ["MASK", "is_secret_name", "redact_url"]

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


def redact_url(url: str, *, whole_userinfo: bool = False) -> str:
    """``url`` with its password and every credential-bearing query parameter (``password``,
    ``sslpassword``, ``token``, ``secret``, ``api_key``, ...) replaced by ``***``: safe for
    messages, logs and ``/health``. Text without ``://`` is redacted as libpq keywords.

    ``whole_userinfo=True`` masks all of the userinfo, user name included, for schemes that
    put a token alone where the user goes (NATS: ``nats://TOKEN@host``)."""
    if "://" not in url:
        return _redact_keywords(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    masked = password is not None or (whole_userinfo and "@" in parts.netloc)
    if masked:
        host = parts.netloc.rpartition("@")[2]
        user = "" if whole_userinfo else f"{parts.username or ''}:"
        parts = parts._replace(netloc=f"{user}{MASK}@{host}")
    query = _redact_query(parts.query)
    if not masked and query == parts.query:
        return url  # untouched, byte for byte
    return urlunsplit(parts._replace(query=query))
