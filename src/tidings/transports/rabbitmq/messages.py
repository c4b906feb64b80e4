"""The shape of an outgoing message, and the frame option that skips waiting for a drain."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import aiormq
from pamqp.commands import Basic

CONTENT_TYPE = "application/cloudevents+json"


# aiormq >= 7 can queue a frame without waiting for the socket to drain; older ones cannot.
_NO_DRAIN: dict[str, Any] = (
    {"wait": False}
    if "wait" in inspect.signature(aiormq.Channel.basic_publish).parameters
    and "wait" in inspect.signature(aiormq.Channel.basic_ack).parameters
    else {}
)


@dataclass(frozen=True, slots=True)
class _Out:
    """One message to publish: where, what, and whether an unroutable one is an error."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Basic.Properties
    mandatory: bool = False
