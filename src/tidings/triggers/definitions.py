"""Trigger definitions: what YAML, the HTTP API and the database hand over, checked once.

``parse_trigger`` turns one mapping into a frozen ``Trigger`` (pattern validated by
``tidings.topics``, condition compiled by ``tidings.triggers.conditions``) or raises
``TriggerError`` naming the path of the bad field (``triggers[2].condition``), what is wrong
and, for a condition, the position in its text. ``trigger_to_dict`` is the inverse, JSON-safe,
so a definition survives the API and the database unchanged.

An action is written with its options beside its ``type`` (``{type: webhook, endpoint:
finance}``); ``name`` is optional and labels it in results and logs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tidings.topics import PatternError, compile_pattern
from tidings.triggers.conditions import Condition, ConditionError, compile_condition

__all__ = [
    "MAX_ACTIONS",
    "MAX_TRIGGERS",
    "ActionSpec",
    "Trigger",
    "TriggerError",
    "parse_action",
    "parse_trigger",
    "parse_triggers",
    "trigger_to_dict",
]

MAX_ACTIONS: Final = 32  # per trigger
MAX_TRIGGERS: Final = 100_000  # per definition list
MAX_TEXT: Final = 4096  # description and other free text

#: Trigger ids appear in job keys ``event:trigger:index``, URLs and metrics labels.
ID_RULE: Final = "1 to 128 letters, digits, '_', '-' or '.', starting with a letter or digit"
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_ACTION_TYPE: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_FIELD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_OPTION_DEPTH: Final = 16

TRIGGER_KEYS: Final = (
    "id",
    "pattern",
    "condition",
    "actions",
    "compensation",
    "enabled",
    "description",
    "partition_key",
)


class TriggerError(ValueError):
    """A trigger definition is wrong at ``path``: ``message`` (and for a condition, the 0-based
    ``position`` in its text plus a caret ``excerpt``)."""

    def __init__(
        self, path: str, message: str, *, position: int | None = None, excerpt: str = ""
    ) -> None:
        self.path = path
        self.message = message
        self.position = position
        self.excerpt = excerpt
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One action of a trigger: its ``type`` (webhook, publish, email, log, a registered name),
    the ``options`` that type reads, and an optional ``name``."""

    type: str
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __hash__(self) -> int:  # options is a dict: hash what identifies the action
        return hash((self.type, self.name))


@dataclass(frozen=True, slots=True)
class Trigger:
    """Events of ``pattern`` that satisfy ``condition`` (None: all of them) start ``actions``;
    ``compensation`` runs for an action's result when a reorg invalidates its event."""

    id: str
    pattern: str
    actions: tuple[ActionSpec, ...]
    condition: Condition | None = None
    compensation: ActionSpec | None = None
    enabled: bool = True
    description: str = ""
    partition_key: str | None = None

    def __hash__(self) -> int:  # ids are unique within a set of triggers
        return hash(self.id)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _text(
    raw: Mapping[str, Any],
    key: str,
    path: str,
    *,
    rule: re.Pattern[str] | None = None,
    what: str = "a string",
) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise TriggerError(f"{path}.{key}", f"expected {what}, got {_kind(value)}")
    if rule is not None and not rule.fullmatch(value):
        raise TriggerError(f"{path}.{key}", f"{_kind(value)} is not {what}")
    if len(value) > MAX_TEXT:
        raise TriggerError(f"{path}.{key}", f"longer than {MAX_TEXT} characters")
    return value


def _unknown(raw: Mapping[str, Any], known: Sequence[str], path: str) -> None:
    for key in raw:
        if not isinstance(key, str):
            raise TriggerError(path, f"keys must be strings, got {_kind(key)}")
        if key not in known:
            raise TriggerError(f"{path}.{key}", f"unknown key; expected one of: {', '.join(known)}")


def _check_json(value: Any, path: str, depth: int) -> None:
    """Options travel as JSON (API, database, job queue): refuse what JSON cannot carry."""
    if depth > MAX_OPTION_DEPTH:
        raise TriggerError(path, f"nested more than {MAX_OPTION_DEPTH} levels deep")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TriggerError(path, f"expected a finite number, got {value!r}")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TriggerError(path, f"keys must be strings, got {_kind(key)}")
            _check_json(item, f"{path}.{key}", depth + 1)
        return
    raise TriggerError(
        path, f"expected a string, number, true/false, null, list or mapping, got {_kind(value)}"
    )


def _known_types(action_types: Collection[str]) -> str:
    names = sorted(action_types)
    shown = ", ".join(names[:20])
    return shown + (", ..." if len(names) > 20 else "")


def parse_action(
    raw: Any,
    *,
    path: str = "triggers[0].actions[0]",
    action_types: Collection[str] | None = None,
    validate_action: Callable[[ActionSpec], None] | None = None,
) -> ActionSpec:
    """One action mapping (``type``, optional ``name``, the type's options beside them).

    ``action_types`` refuses a type not in it; ``validate_action`` (e.g. the actions package's
    check of a type's options) may raise ``ValueError``, reported at ``path`` (at
    ``path.option`` when it has ``.option`` and ``.problem``, as ``ActionOptionError`` does).
    """
    if not isinstance(raw, Mapping):
        raise TriggerError(
            path, f"expected a mapping with 'type' (and the action's options), got {_kind(raw)}"
        )
    for key in raw:
        if not isinstance(key, str):
            raise TriggerError(path, f"keys must be strings, got {_kind(key)}")
    if "type" not in raw:
        raise TriggerError(
            f"{path}.type", "required but missing: the action type (webhook, publish, email, log)"
        )
    kind = _text(raw, "type", path, rule=_ACTION_TYPE, what="an action type name")
    if action_types is not None and kind not in action_types:
        raise TriggerError(
            f"{path}.type",
            f"unknown action type {kind!r} (known: {_known_types(action_types)})",
        )
    name = None
    if raw.get("name") is not None:
        name = _text(raw, "name", path, rule=_ID, what=f"a name of {ID_RULE}")
    options = {k: v for k, v in raw.items() if k not in ("type", "name")}
    for key, value in options.items():
        _check_json(value, f"{path}.{key}", 0)
    spec = ActionSpec(type=kind, options=options, name=name)
    if validate_action is not None:
        try:
            validate_action(spec)
        except TriggerError:
            raise
        except ValueError as exc:
            # an ActionOptionError names its option: report it at the option's own path
            option, problem = getattr(exc, "option", None), getattr(exc, "problem", None)
            if isinstance(option, str) and isinstance(problem, str):
                raise TriggerError(f"{path}.{option}", problem) from None
            raise TriggerError(path, str(exc)) from None
    return spec


def parse_trigger(
    raw: Mapping[str, Any],
    *,
    path: str = "triggers[0]",
    action_types: Collection[str] | None = None,
    validate_action: Callable[[ActionSpec], None] | None = None,
) -> Trigger:
    """One trigger mapping to a ``Trigger``; ``TriggerError`` names the first bad field."""
    if not isinstance(raw, Mapping):
        raise TriggerError(
            path, f"expected a mapping with id, pattern, condition and actions, got {_kind(raw)}"
        )
    _unknown(raw, TRIGGER_KEYS, path)
    for key in ("id", "pattern", "actions"):
        if key not in raw:
            raise TriggerError(f"{path}.{key}", "required but missing")
    trigger_id = _text(raw, "id", path, rule=_ID, what=f"an id of {ID_RULE}")
    pattern = _text(raw, "pattern", path, what="an event type pattern such as 'order.*'")
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        raise TriggerError(f"{path}.pattern", str(exc)) from None
    condition = None
    if raw.get("condition") is not None:
        text = raw["condition"]
        if not isinstance(text, str):
            raise TriggerError(
                f"{path}.condition", f"expected a condition as text, got {_kind(text)}"
            )
        try:
            condition = compile_condition(text)
        except ConditionError as exc:
            raise TriggerError(
                f"{path}.condition", str(exc), position=exc.position, excerpt=exc.excerpt()
            ) from None
    actions = raw["actions"]
    if not isinstance(actions, list | tuple) or not actions:
        got = _kind(actions) if actions else "an empty list"
        raise TriggerError(f"{path}.actions", f"expected a non-empty list of actions, got {got}")
    if len(actions) > MAX_ACTIONS:
        raise TriggerError(f"{path}.actions", f"more than {MAX_ACTIONS} actions")
    specs = tuple(
        parse_action(
            item,
            path=f"{path}.actions[{i}]",
            action_types=action_types,
            validate_action=validate_action,
        )
        for i, item in enumerate(actions)
    )
    compensation = None
    if raw.get("compensation") is not None:
        compensation = parse_action(
            raw["compensation"],
            path=f"{path}.compensation",
            action_types=action_types,
            validate_action=validate_action,
        )
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise TriggerError(f"{path}.enabled", f"expected true or false, got {_kind(enabled)}")
    description = ""
    if raw.get("description") is not None:
        description = _text(raw, "description", path)
    partition_key = None
    if raw.get("partition_key") is not None:
        partition_key = _text(
            raw, "partition_key", path, rule=_FIELD, what="a field name such as chain_id"
        )
    return Trigger(
        id=trigger_id,
        pattern=pattern,
        actions=specs,
        condition=condition,
        compensation=compensation,
        enabled=enabled,
        description=description,
        partition_key=partition_key,
    )


def parse_triggers(
    raw: Sequence[Mapping[str, Any]],
    *,
    path: str = "triggers",
    action_types: Collection[str] | None = None,
    validate_action: Callable[[ActionSpec], None] | None = None,
) -> list[Trigger]:
    """A list of trigger mappings; ids must be unique. Raises ``TriggerError`` at the first
    bad field, naming its path (``triggers[2].actions[0].type``)."""
    if not isinstance(raw, list | tuple):
        raise TriggerError(path, f"expected a list of triggers, got {_kind(raw)}")
    if len(raw) > MAX_TRIGGERS:
        raise TriggerError(path, f"more than {MAX_TRIGGERS} triggers")
    found: list[Trigger] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        trigger = parse_trigger(
            item, path=f"{path}[{i}]", action_types=action_types, validate_action=validate_action
        )
        if trigger.id in seen:
            raise TriggerError(
                f"{path}[{i}].id",
                f"duplicate trigger id {trigger.id!r} (first used by {path}[{seen[trigger.id]}])",
            )
        seen[trigger.id] = i
        found.append(trigger)
    return found


def _action_to_dict(spec: ActionSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"type": spec.type}
    if spec.name is not None:
        out["name"] = spec.name
    out.update(spec.options)
    return out


def trigger_to_dict(trigger: Trigger) -> dict[str, Any]:
    """The mapping ``parse_trigger`` reads back into an equal ``Trigger`` (JSON-safe when the
    action options are)."""
    out: dict[str, Any] = {"id": trigger.id, "pattern": trigger.pattern}
    if trigger.condition is not None:
        out["condition"] = trigger.condition.text
    out["actions"] = [_action_to_dict(spec) for spec in trigger.actions]
    if trigger.compensation is not None:
        out["compensation"] = _action_to_dict(trigger.compensation)
    out["enabled"] = trigger.enabled
    if trigger.description:
        out["description"] = trigger.description
    if trigger.partition_key is not None:
        out["partition_key"] = trigger.partition_key
    return out
