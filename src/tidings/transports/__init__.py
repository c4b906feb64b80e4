"""Broker backends behind one protocol (``tidings.transport.Transport``), chosen by URL.

Each backend lives in its own module and is imported only when its URL scheme is used, so a
user of one broker never needs the client libraries of the others.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from tidings.transport import Transport, TransportError
from tidings.urls import redact_url

__all__ = ["SCHEMES", "open_transport", "redact_url"]

# scheme -> (module, class name, pip extra)
SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("tidings.transports.memory", "MemoryTransport", None),
    "redis": ("tidings.transports.redis", "RedisTransport", "redis"),
    "rediss": ("tidings.transports.redis", "RedisTransport", "redis"),
    "nats": ("tidings.transports.nats", "NatsTransport", "nats"),
    "tls": ("tidings.transports.nats", "NatsTransport", "nats"),
    "kafka": ("tidings.transports.kafka", "KafkaTransport", "kafka"),
    "kafkas": ("tidings.transports.kafka", "KafkaTransport", "kafka"),
    "amqp": ("tidings.transports.rabbitmq", "RabbitMQTransport", "rabbitmq"),
    "amqps": ("tidings.transports.rabbitmq", "RabbitMQTransport", "rabbitmq"),
    "postgresql": ("tidings.transports.postgres", "PostgresTransport", "postgres"),
    "postgres": ("tidings.transports.postgres", "PostgresTransport", "postgres"),
}


def open_transport(url: str, **options: Any) -> Transport:
    """Make (not yet connect) the transport for ``url``; ``await t.start()`` connects it."""
    if not isinstance(url, str) or "://" not in url:
        shown = redact_url(url) if isinstance(url, str) else type(url).__name__
        raise TransportError(
            f"transport URL: expected scheme://..., got {shown!r} "
            f"(schemes: {', '.join(sorted(SCHEMES))})"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise TransportError(
            f"transport URL {redact_url(url)!r}: unknown scheme {scheme!r}; "
            f"expected one of {', '.join(sorted(SCHEMES))}"
        )
    module_name, class_name, extra = SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'tidings[{extra}]'" if extra else "reinstall tidings"
        raise TransportError(
            f"transport {scheme!r} needs a client library that is not installed ({exc.name}); "
            f"run: {hint}"
        ) from exc
    cls = getattr(module, class_name)
    transport: Transport = cls(url, **options)
    return transport
