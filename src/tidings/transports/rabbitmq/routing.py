"""Routing: the AMQP topic binding of a tidings pattern, and the routing key's limit."""

from __future__ import annotations

from tidings.topics import Pattern

_MAX_ROUTING_KEY = 255  # bytes, an AMQP shortstr


def binding_key(pattern: Pattern) -> str:
    """The AMQP topic binding for a tidings pattern.

    AMQP ``#`` matches zero or more words like tidings ``**`` (``a.#`` matches ``a``, ``a.#.z``
    matches ``a.z``); a literal ``#`` inside a tidings segment would widen the binding, which
    the exact post-filter corrects.
    """
    return ".".join("#" if seg == "**" else seg for seg in pattern.segments)
