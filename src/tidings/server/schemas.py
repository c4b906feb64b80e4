"""The JSON shapes of the HTTP API as msgspec types: request bodies and answers.

``/openapi.json`` takes its schemas from these (``msgspec.json.schema_components``), and the
endpoint body's known keys are ``EndpointIn``'s fields, so the document and the checks in
``app.py`` cannot drift apart on which keys exist.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "ENDPOINT_FIELDS",
    "AcceptedOut",
    "ApiKeyIn",
    "ApiKeyOut",
    "ApiKeyPage",
    "DeliveryOut",
    "DeliveryPage",
    "EndpointIn",
    "EndpointPage",
    "EventIn",
    "EventPage",
    "Problem",
    "ReplayIn",
    "ReplayJob",
    "ReplayPage",
    "StreamList",
    "StreamPage",
    "SubscriptionPage",
]

Time = Annotated[str, msgspec.Meta(description="RFC 3339 time, e.g. 2026-01-15T10:30:00Z")]
Cursor = Annotated[
    str | None,
    msgspec.Meta(description="Pass as `cursor` for the next page; null on the last page."),
]


class FieldErrorOut(msgspec.Struct):
    field: str
    detail: str


class Problem(msgspec.Struct):
    """RFC 9457 problem details: every error of the API."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[FieldErrorOut] | None = None


class EventIn(msgspec.Struct):
    """A CloudEvent (structured mode); `id`, `time`, `source` and `specversion` are filled in
    when left out. Extension attributes (lowercase letters and digits) are kept."""

    type: Annotated[str, msgspec.Meta(min_length=1, examples=["order.created"])]
    id: str | None = None
    source: str | None = None
    specversion: Literal["1.0"] = "1.0"
    time: Time | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: Any = None


class AcceptedOut(msgspec.Struct):
    accepted: int
    ids: list[str]
    deliveries: int


class StoredEventOut(msgspec.Struct):
    position: int
    event: dict[str, Any]
    stream: str | None = None
    version: int | None = None


class EventPage(msgspec.Struct):
    events: list[StoredEventOut]
    next_after: int | None
    next_cursor: Cursor


class StreamOut(msgspec.Struct):
    stream: str
    version: int


class StreamList(msgspec.Struct):
    streams: list[StreamOut]
    next_cursor: Cursor


class StreamPage(msgspec.Struct):
    stream: str
    version: Annotated[int, msgspec.Meta(description="The stream's current version.")]
    events: list[StoredEventOut]
    next_cursor: Cursor


class Auth(msgspec.Struct):
    bearer: str | None = None
    username: str | None = None
    password: str | None = None
    header: str | None = None
    value: str | None = None


class EndpointIn(msgspec.Struct):
    """An endpoint to register (`POST /endpoints`, `url` required) or change (`PATCH`)."""

    url: str | None = None
    events: list[str] | None = None
    secret: str | None = None
    headers: dict[str, str] | None = None
    auth: Auth | None = None
    timeout: float | None = None
    rate_limit: float | None = None
    burst: int | None = None
    max_in_flight: int | None = None
    enabled: bool | None = None
    format: Literal["seed", "cloudevents", "cloudevents-binary"] | None = None
    compress: Literal["none", "gzip"] | None = None
    max_retries: int | None = None
    retry_delay: float | None = None
    max_delay: float | None = None


ENDPOINT_FIELDS = frozenset(EndpointIn.__struct_fields__)


class EndpointPage(msgspec.Struct):
    endpoints: list[dict[str, Any]]
    next_cursor: Cursor


class AttemptOut(msgspec.Struct):
    number: int
    started_at: Time | None
    duration: float | None
    status_code: int | None
    response_body: str | None
    error: str | None


class DeliveryOut(msgspec.Struct):
    id: str
    event_id: str
    position: int
    endpoint_id: str
    state: Literal["pending", "delivering", "delivered", "dead", "cancelled"]
    attempts: int
    next_attempt_at: Time | None = None
    last_status: int | None = None
    last_error: str | None = None
    created_at: Time | None = None
    updated_at: Time | None = None
    delivered_at: Time | None = None
    attempt_log: list[AttemptOut] | None = None


class DeliveryPage(msgspec.Struct):
    deliveries: list[DeliveryOut]
    next_before: str | None
    next_cursor: Cursor


class SubscriptionOut(msgspec.Struct):
    name: str
    position: int
    lag_events: int | None
    lag_seconds: float | None
    handled: int
    failed: int
    running: bool
    halted: bool
    error: str | None


class SubscriptionPage(msgspec.Struct):
    head: int
    subscriptions: list[SubscriptionOut]
    next_cursor: Cursor


class ReplayIn(msgspec.Struct):
    since: Time
    until: Time | None = None
    types: list[str] | None = None
    dry_run: bool = False


class ReplayJob(msgspec.Struct):
    id: str
    state: Literal["running", "done", "failed"]
    since: Time
    until: Time | None
    types: list[str]
    events_total: int
    events_read: int
    deliveries: int
    progress: Annotated[float, msgspec.Meta(description="events_read / events_total, 0..1")]
    error: str | None
    created_at: Time
    finished_at: Time | None
    url: str


class ReplayPage(msgspec.Struct):
    replays: list[ReplayJob]
    next_cursor: Cursor


class ApiKeyIn(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    scopes: list[Literal["read", "publish", "admin"]]


class ApiKeyOut(msgspec.Struct):
    id: str
    name: str
    prefix: Annotated[str, msgspec.Meta(description="The key's first characters.")]
    scopes: list[str]
    created_at: Time
    source: Literal["api", "config"]
    key: Annotated[
        str | None, msgspec.Meta(description="The key itself: given once, when it is made.")
    ] = None


class ApiKeyPage(msgspec.Struct):
    api_keys: list[ApiKeyOut]
    next_cursor: Cursor
