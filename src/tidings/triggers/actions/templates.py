"""Text templates of action options: ``"Agent {data.agent_id} on chain {extensions.chain_id}"``.

A ``{path}`` is replaced by a value of the event: an envelope attribute (``id``, ``type``,
``source``, ``subject``, ``time``, ``correlation_id``, ...), ``data`` and what is inside it
(``data.order.total``, ``data.items[0].sku``), ``extensions.NAME`` or ``metadata.NAME``.
``{{`` and ``}}`` are literal braces. Nothing is evaluated: a path is looked up, never run.
Templates are parsed once, when the action is built, so a malformed one is refused at load with
its position; a path the event lacks fails that job (permanently: the event will not change).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tidings.event import Event, to_dict
from tidings.triggers.actions.base import PermanentActionError

__all__ = ["Template", "TemplateError", "render_value"]

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*$")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_ENVELOPE = frozenset(Event.__struct_fields__)


class TemplateError(ValueError):
    """A template is malformed; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at position {position})")
        self.position = position


@dataclass(frozen=True, slots=True)
class _Field:
    path: str
    root: str
    steps: tuple[str | int, ...]


def _parse_path(path: str, position: int) -> _Field:
    if not _PATH.match(path):
        raise TemplateError(
            f"{{{path}}} is not a field path; write {{data.name}}, {{type}}, "
            "{extensions.chain_id} or {data.items[0]}",
            position,
        )
    root = re.match(r"[A-Za-z_][A-Za-z0-9_]*", path)
    assert root is not None
    name = root.group(0)
    if name not in _ENVELOPE:
        raise TemplateError(
            f"{{{path}}}: {name!r} is not an event attribute; start with data, extensions, "
            f"metadata or one of {', '.join(sorted(_ENVELOPE - {'data', 'extensions'}))}",
            position,
        )
    steps: list[str | int] = []
    for m in _STEP.finditer(path, root.end()):
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
    return _Field(path, name, tuple(steps))


class Template:
    """A parsed template; ``render(event)`` gives the text."""

    __slots__ = ("_parts", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TemplateError(f"expected text, got {type(text).__name__}", 0)
        self.text = text
        parts: list[str | _Field] = []
        literal: list[str] = []
        i = 0
        while i < len(text):
            c = text[i]
            if c == "{":
                if text.startswith("{{", i):
                    literal.append("{")
                    i += 2
                    continue
                end = text.find("}", i)
                if end == -1:
                    raise TemplateError("'{' is not closed; write {{ for a literal brace", i)
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append(_parse_path(text[i + 1 : end].strip(), i))
                i = end + 1
            elif c == "}":
                if not text.startswith("}}", i):
                    raise TemplateError("'}' without '{'; write }} for a literal brace", i)
                literal.append("}")
                i += 2
            else:
                literal.append(c)
                i += 1
        if literal:
            parts.append("".join(literal))
        self._parts = tuple(parts)

    @property
    def single_field(self) -> bool:
        """The whole template is one ``{path}``: ``value()`` keeps the value's own type."""
        return len(self._parts) == 1 and isinstance(self._parts[0], _Field)

    def value(self, event: Event) -> Any:
        """The value itself for a single-field template, else the rendered text."""
        if self.single_field:
            part = self._parts[0]
            assert isinstance(part, _Field)
            return _lookup(event, part)
        return self.render(event)

    def render(self, event: Event) -> str:
        out = []
        for part in self._parts:
            out.append(part if isinstance(part, str) else render_value(_lookup(event, part)))
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def render_value(value: Any) -> str:
    """How a value reads in text: strings as they are, None as nothing, times in ISO 8601,
    numbers and booleans as JSON writes them, lists and mappings as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _root(event: Event, name: str) -> Any:
    if name == "data":
        return event.data if type(event) is Event else to_dict(event).get("data")
    if name == "extensions":
        return event.extensions or {}
    if name == "metadata":
        return event.metadata or {}
    return getattr(event, name)


def _lookup(event: Event, f: _Field) -> Any:
    value = _root(event, f.root)
    for step in f.steps:
        if isinstance(step, int):
            if isinstance(value, list | tuple) and -len(value) <= step < len(value):
                value = value[step]
                continue
        elif isinstance(value, dict) and step in value:
            value = value[step]
            continue
        raise PermanentActionError(
            f"template field {{{f.path}}}: event {event.id} ({event.type}) has no such value"
        )
    return value
