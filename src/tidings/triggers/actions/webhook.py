"""The ``webhook`` action: the matched event, delivered through tidings' durable webhook queue.

Options: ``endpoint`` (the id of a configured webhook endpoint) or ``url`` (an endpoint known
only by its URL: it is registered as an API endpoint, id ``url-<hash>``, so the SSRF guard
checks it and a config reload leaves it alone). The delivery is signed, retried, dead-lettered
and replayable like every webhook delivery (docs/webhooks.md); the action only enqueues it, so
it succeeds as soon as the delivery is stored. Its delivery id is derived from the job key: a
job that runs twice (at-least-once) makes one delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tidings.config import endpoint_id_for_url
from tidings.event import Event
from tidings.triggers.actions.base import (
    ActionContext,
    ActionOptionError,
    PermanentActionError,
    check_options,
    derived_id,
    option_str,
)
from tidings.urls import redact_url

if TYPE_CHECKING:
    from tidings.webhooks.queue import DeliveryQueue

__all__ = ["DurableWebhooks", "WebhookAction"]


class WebhookAction:
    def __init__(self, options: Mapping[str, Any]) -> None:
        options = check_options("webhook", options, ("endpoint", "url"))
        self.endpoint = option_str("webhook", options, "endpoint", None)
        self.url = option_str("webhook", options, "url", None)
        if (self.endpoint is None) == (self.url is None):
            raise ActionOptionError(
                "webhook", "endpoint", "give exactly one of 'endpoint' (a configured endpoint's "
                "id) or 'url'"
            )  # fmt: skip
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                shown = redact_url(self.url)  # never a password in an error
                raise ActionOptionError(
                    "webhook", "url", f"expected an http:// or https:// URL, got {shown!r}"
                )

    async def run(self, ctx: ActionContext) -> Mapping[str, Any] | None:
        if ctx.webhooks is None:
            raise PermanentActionError(
                "webhook action: this host has no webhook delivery queue (run it under "
                "`tidings serve`, or pass webhooks= to the context)"
            )
        delivery, endpoint, new = await ctx.webhooks(
            key=ctx.key, event=ctx.event, position=ctx.position, endpoint=self.endpoint,
            url=self.url,
        )  # fmt: skip
        return {"delivery_id": delivery, "endpoint": endpoint, "new": new}


class DurableWebhooks:
    """The ``webhooks`` of an ActionContext: enqueues into a ``DeliveryQueue`` (on the store
    that holds the events, since a delivery reads its event by store position)."""

    def __init__(self, queue: DeliveryQueue) -> None:
        self.queue = queue
        self._known: set[str] = set()  # endpoint ids seen to exist: not looked up per job

    def enqueue_sync(
        self,
        *,
        key: str,
        event: Event,
        position: int | None,
        endpoint: str | None = None,
        url: str | None = None,
    ) -> tuple[str, str, bool]:
        if position is None:
            raise PermanentActionError(
                f"webhook action: event {event.id} is not in the store (no position); webhook "
                "deliveries are made of stored events"
            )
        if endpoint is None:
            if url is None:
                raise PermanentActionError("webhook action: no endpoint and no url")
            endpoint = endpoint_id_for_url(url)
            if endpoint not in self._known and self.queue.endpoint(endpoint) is None:
                from tidings.webhooks.endpoint import Endpoint  # noqa: PLC0415

                self.queue.save_endpoint(Endpoint(id=endpoint, url=url, source="api"))
        elif endpoint not in self._known and self.queue.endpoint(endpoint) is None:
            raise PermanentActionError(
                f"webhook action: endpoint {endpoint!r} is not configured; add it to the "
                "`events.endpoints` of the config or through POST /endpoints"
            )
        self._known.add(endpoint)
        delivery = derived_id(key, event, "webhook")
        new = self.queue.add_delivery(delivery, event.id, position, endpoint)
        return delivery, endpoint, new

    async def __call__(
        self,
        *,
        key: str,
        event: Event,
        position: int | None,
        endpoint: str | None = None,
        url: str | None = None,
    ) -> tuple[str, str, bool]:
        return await asyncio.to_thread(
            self.enqueue_sync, key=key, event=event, position=position, endpoint=endpoint, url=url
        )
