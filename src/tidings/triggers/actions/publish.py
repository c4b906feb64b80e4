"""The ``publish`` action: a new event, caused by the matched one.

Options: ``event_type`` (the new event's type, required; ``type`` names the action itself),
``data`` (any JSON value; each string in it is a template, and a string that is one ``{path}``
keeps the value's own type), ``source`` (default ``tidings/triggers``), ``subject`` (a
template).

The new event's ``causation_id`` is the matched event's id; its ``correlation_id`` is the
matched event's (or, when that has none, the matched event's id), so a chain of reactions
shares one correlation id. Its id is derived from the job key: a job that runs twice
(at-least-once) publishes the same id twice, and the store refuses the second as a duplicate,
which this action counts as already done.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidings.event import Event
from tidings.store.base import DuplicateEvent
from tidings.triggers.actions.base import (
    ActionContext,
    ActionOptionError,
    PermanentActionError,
    check_options,
    derived_id,
    option_str,
)
from tidings.triggers.actions.templates import Template, TemplateError

__all__ = ["PublishAction"]


def _compile(value: Any, path: str) -> Any:
    """``value`` with every string a Template (``path`` names where, for errors)."""
    if isinstance(value, str):
        try:
            return Template(value)
        except TemplateError as exc:
            raise ActionOptionError("publish", path, str(exc)) from exc
    if isinstance(value, Mapping):
        return {str(k): _compile(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_compile(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise ActionOptionError("publish", path, f"expected a JSON value, got {type(value).__name__}")


def _fill(value: Any, event: Event) -> Any:
    if isinstance(value, Template):
        return value.value(event)
    if isinstance(value, dict):
        return {k: _fill(v, event) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, event) for v in value]
    return value


class PublishAction:
    def __init__(self, options: Mapping[str, Any]) -> None:
        options = check_options("publish", options, ("event_type", "data", "source", "subject"))
        self.type = option_str("publish", options, "event_type")
        if any(c.isspace() for c in self.type):
            raise ActionOptionError(
                "publish", "event_type", f"must not contain spaces: {self.type!r}"
            )
        self.data = _compile(options.get("data"), "data")
        self.source = option_str("publish", options, "source", "tidings/triggers")
        subject = option_str("publish", options, "subject", None)
        try:
            self.subject = None if subject is None else Template(subject)
        except TemplateError as exc:
            raise ActionOptionError("publish", "subject", str(exc)) from exc

    def event_for(self, ctx: ActionContext) -> Event:
        """The event this action publishes for ``ctx`` (the same one every time)."""
        cause = ctx.event
        return Event(
            id=derived_id(ctx.key, cause, "publish"),
            type=self.type,
            source=self.source,
            subject=None if self.subject is None else self.subject.render(cause),
            data=_fill(self.data, cause),
            causation_id=cause.id,
            correlation_id=cause.correlation_id or cause.id,
            tenant_id=cause.tenant_id,
        )

    async def run(self, ctx: ActionContext) -> Mapping[str, Any] | None:
        if ctx.publish is None:
            raise PermanentActionError(
                "publish action: this host gives actions no way to publish (run it under "
                "`tidings serve` or `tidings process`, or pass publish= to the context)"
            )
        event = self.event_for(ctx)
        try:
            await ctx.publish(event)
        except DuplicateEvent:
            return {"event_id": event.id, "type": event.type, "duplicate": True}
        return {"event_id": event.id, "type": event.type}
