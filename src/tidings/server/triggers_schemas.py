"""The JSON shapes of the ``/triggers`` routes as msgspec types, for ``/openapi.json``.

The bodies are checked by ``tidings.triggers.definitions.parse_trigger`` (which names the
failing field and a condition's position), not by these types: they describe, they do not
decide, so the document and the check cannot disagree on what is refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from tidings.server.schemas import Cursor, Time

__all__ = [
    "DeadJobPage",
    "RetryDeadIn",
    "RetryDeadOut",
    "TriggerIn",
    "TriggerOut",
    "TriggerPage",
    "TriggerPatch",
    "TriggerResultPage",
    "TriggerStatus",
]

Action = Annotated[
    dict[str, Any],
    msgspec.Meta(
        description="`type` (webhook, publish, email, log, or a registered name), an optional "
        "`name`, and the type's options beside them.",
        examples=[{"type": "webhook", "endpoint": "finance"}],
    ),
]


class TriggerIn(msgspec.Struct, omit_defaults=True):
    """A trigger definition (docs/triggers.md). For PUT the `id` may be left out (the path's)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128, examples=["big-orders"])]
    pattern: Annotated[str, msgspec.Meta(examples=["order.*"])]
    actions: list[Action]
    condition: Annotated[str | None, msgspec.Meta(examples=["data.amount > 100"])] = None
    compensation: Action | None = None
    enabled: bool = True
    description: str | None = None
    partition_key: str | None = None


class TriggerPatch(msgspec.Struct, omit_defaults=True):
    """Fields to change (JSON merge patch: null puts a field back to its default). The result
    is checked as a whole, like a new definition."""

    pattern: str | None = None
    actions: list[Action] | None = None
    condition: str | None = None
    compensation: Action | None = None
    enabled: bool | None = None
    description: str | None = None
    partition_key: str | None = None


class TriggerOut(msgspec.Struct):
    """A trigger as defined (action options named like secrets shown as `***`), with where it
    comes from: `api` (saved, changeable here) or `config` (the config file's)."""

    id: str
    pattern: str
    actions: list[dict[str, Any]]
    enabled: bool
    source: Literal["api", "config"]
    condition: str | None = None
    compensation: dict[str, Any] | None = None
    description: str | None = None
    partition_key: str | None = None
    version: Annotated[
        int | None, msgspec.Meta(description="Bumped by every change (null: config).")
    ] = None
    created_at: Time | None = None
    updated_at: Time | None = None


class TriggerPage(msgspec.Struct):
    triggers: list[TriggerOut]
    next_cursor: Cursor


class TriggerResultOut(msgspec.Struct):
    key: Annotated[str, msgspec.Meta(description="event id : trigger id : action index")]
    event_id: str
    trigger_id: str
    action_index: int
    action_type: str
    status: str
    output: Any
    error: str | None
    duration_ms: float | None
    attempts: int
    created_at: Time | None
    updated_at: Time | None


class TriggerResultPage(msgspec.Struct):
    results: list[TriggerResultOut]
    next_cursor: Cursor


class DeadJobOut(msgspec.Struct):
    key: str
    event_id: str
    trigger_id: str
    action_index: int
    action_type: str
    action_name: str | None
    attempts: int
    error: str | None


class DeadJobPage(msgspec.Struct):
    jobs: list[DeadJobOut]


class RetryDeadIn(msgspec.Struct):
    """One dead job by its key, or (no key) every dead job."""

    key: str | None = None


class RetryDeadOut(msgspec.Struct):
    retried: int


class TriggerStatus(msgspec.Struct):
    """Seed 001's monitoring figures (docs/triggers.md#monitoring)."""

    ingestion: dict[str, Any]
    processing: dict[str, Any]
    matching: dict[str, Any]
    actions: dict[str, Any]
    queue: dict[str, Any]
    chains: list[dict[str, Any]]
    triggers: dict[str, Any]
    process: Annotated[
        dict[str, Any],
        msgspec.Meta(description="This server's own processor and workers, when it runs them."),
    ]
