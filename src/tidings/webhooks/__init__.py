"""Webhook delivery: endpoints, Standard Webhooks signing, a durable delivery queue, workers."""

from tidings.webhooks.endpoint import (
    Auth,
    Endpoint,
    PayloadFormat,
    endpoint_id_for_url,
    from_settings,
)

__all__ = ["Auth", "Endpoint", "PayloadFormat", "endpoint_id_for_url", "from_settings"]
