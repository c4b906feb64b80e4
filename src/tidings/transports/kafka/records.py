"""What tidings puts on a Kafka record: content type, headers, the outgoing record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CONTENT_TYPE = b"application/cloudevents+json"
H_TYPE = "tidings-type"
H_REPLAY = "tidings-replay-for"
H_ERROR = "tidings-error"
H_ATTEMPTS = "tidings-attempts"
H_FAILED_AT = "tidings-failed-at"
H_EVENT_ID = "tidings-event-id"
H_SUBSCRIPTION = "tidings-subscription"
H_TOPIC = "tidings-topic"
H_KEY = "tidings-key"


@dataclass(slots=True)
class _Out:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", "replace") if value is not None else None
    return None
