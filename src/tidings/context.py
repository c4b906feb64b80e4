"""Request metadata that every event emitted in the current context carries.

A web middleware (``tidings.integrations.fastapi``) enters ``event_context(...)`` for each
request; the outbox writer, SQLAlchemy capture and the environment's publishers call
``apply(event)``, which fills the correlation, request, user, tenant, session and trace
attributes the event does not set itself. A ContextVar, so concurrent requests (threads or
asyncio tasks) never see each other's metadata.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tidings.event import Event

__all__ = ["EventContext", "apply", "current", "event_context", "trace_id_of"]

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclasses.dataclass(frozen=True, slots=True)
class EventContext:
    """What a request knows about itself; ``None`` fields leave an event's own value alone."""

    correlation_id: str | None = None
    request_id: str | None = None
    user_id: str | None = None
    tenant_id: str | None = None
    session_id: str | None = None
    traceparent: str | None = None


_current: ContextVar[EventContext | None] = ContextVar("tidings_event_context", default=None)


def current() -> EventContext | None:
    """The metadata of the request (or job) running in this context, if any."""
    return _current.get()


@contextmanager
def event_context(**fields: str | None) -> Iterator[EventContext]:
    """Attach ``fields`` (EventContext's names) to every event emitted inside the block.

    Nested blocks add to the outer one; a field given as None keeps the outer value.
    """
    unknown = set(fields) - {f.name for f in dataclasses.fields(EventContext)}
    if unknown:
        raise TypeError(
            f"event_context(): unknown field(s) {', '.join(sorted(unknown))}; expected "
            f"{', '.join(f.name for f in dataclasses.fields(EventContext))}"
        )
    outer = _current.get() or EventContext()
    given = {k: v for k, v in fields.items() if v is not None}
    ctx = dataclasses.replace(outer, **given)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a W3C ``traceparent`` header, or None if it is not one."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    return match.group(1) if match else None


def apply(event: Event, ctx: EventContext | None = None) -> Event:
    """Fill ``event``'s unset correlation, request, user, tenant, session and trace attributes
    from ``ctx`` (default: the current context); returns the same event."""
    ctx = ctx if ctx is not None else _current.get()
    if ctx is None:
        return event
    if event.correlation_id is None and ctx.correlation_id is not None:
        event.correlation_id = ctx.correlation_id
    if event.request_id is None and ctx.request_id is not None:
        event.request_id = ctx.request_id
    if event.user_id is None and ctx.user_id is not None:
        event.user_id = ctx.user_id
    if event.tenant_id is None and ctx.tenant_id is not None:
        event.tenant_id = ctx.tenant_id
    if event.session_id is None and ctx.session_id is not None:
        event.session_id = ctx.session_id
    trace = trace_id_of(ctx.traceparent)
    if trace is not None:
        if event.trace_id is None:
            event.trace_id = trace
        extensions = event.extensions or {}
        if "traceparent" not in extensions:
            event.extensions = {**extensions, "traceparent": ctx.traceparent.strip().lower()}  # type: ignore[union-attr]
    return event
