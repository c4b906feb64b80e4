"""Webhook delivery: endpoints, Standard Webhooks signing, a durable delivery queue, workers.

``attach(bus, store)`` delivers what an application publishes on its Bus (``tidings.webhooks
.sink``); it is imported on first use, since its worker needs the ``server`` extra (aiohttp).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tidings.webhooks.endpoint import (
    Auth,
    Endpoint,
    PayloadFormat,
    endpoint_id_for_url,
    from_settings,
)

if TYPE_CHECKING:
    from tidings.webhooks.sink import WebhookSink, attach

__all__ = [
    "Auth",
    "Endpoint",
    "PayloadFormat",
    "WebhookSink",
    "attach",
    "endpoint_id_for_url",
    "from_settings",
]


def __getattr__(name: str) -> Any:
    if name in ("attach", "WebhookSink"):
        return getattr(importlib.import_module("tidings.webhooks.sink"), name)
    raise AttributeError(f"module 'tidings.webhooks' has no attribute {name!r}")
