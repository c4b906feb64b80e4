"""``Settings``: every section together, as ``load`` returns them."""

from __future__ import annotations

from typing import Any

import msgspec

from tidings.config.bus import BusKwargs, BusSettings, EventBrokerSettings, redact_broker
from tidings.config.durations import enc_hook
from tidings.config.errors import MASK
from tidings.config.server import ServerSettings, StoreSettings
from tidings.config.triggers import (
    ProcessorSettings,
    TriggerDefinition,
    redact_processor,
    redact_triggers,
)
from tidings.config.webhooks import WebhookSettings, redact_endpoint
from tidings.urls import redact_url

__all__ = ["Settings"]


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Everything tidings reads from configuration; build it with ``load``."""

    bus: BusSettings = msgspec.field(default_factory=BusSettings)
    instance_id: str | None = None
    source: str | None = None
    event_broker: EventBrokerSettings | None = None
    events: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    # The application's publisher (tidings.publishers): logging, memory or a transport URL;
    # TIDINGS_PUBLISHER sets it.
    publisher: str | None = None
    # Trigger definitions as written; tidings.triggers.definitions.parse_triggers checks them.
    triggers: list[TriggerDefinition] = msgspec.field(default_factory=list)
    processor: ProcessorSettings = msgspec.field(default_factory=ProcessorSettings)

    def bus_kwargs(self) -> BusKwargs:
        """Keyword arguments for ``tidings.Bus(**settings.bus_kwargs())``."""
        bus = self.bus
        return {
            "mode": bus.mode,
            "workers": bus.workers,
            "buffer_size": bus.buffer_size,
            "when_full": bus.when_full,
            "track_deliveries": bus.track_deliveries,
            "dead_letter_size": bus.dead_letter_size,
            "close_timeout": float(bus.close_timeout),
            "retry": bus.retry.policy() if bus.retry is not None else None,
        }

    def redacted(self) -> Settings:
        """A copy safe to print or log: API key, secrets, auth values and header values become
        ``***``, and URL passwords and credential query parameters too."""
        events = self.events
        return msgspec.structs.replace(
            self,
            events=msgspec.structs.replace(
                events,
                endpoints={
                    key: [
                        redact_url(item) if isinstance(item, str) else redact_endpoint(item)
                        for item in items
                    ]
                    for key, items in events.endpoints.items()
                },
                webhooks={name: redact_endpoint(e) for name, e in events.webhooks.items()},
                source=redact_url(events.source),
            ),
            store=msgspec.structs.replace(self.store, url=redact_url(self.store.url)),
            event_broker=redact_broker(self.event_broker),
            publisher=None if self.publisher is None else redact_url(self.publisher),
            triggers=redact_triggers(self.triggers),
            processor=redact_processor(self.processor),
            server=msgspec.structs.replace(
                self.server,
                api_key=None if self.server.api_key is None else MASK,
                api_keys=tuple(
                    k if k.key is None else msgspec.structs.replace(k, key=MASK)
                    for k in self.server.api_keys
                ),
            ),
        )

    def to_builtins(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars (durations as seconds) of ``redacted()``, e.g. for
        JSON output: secrets never leave this way."""
        data: dict[str, Any] = msgspec.to_builtins(self.redacted(), enc_hook=enc_hook)
        return data
