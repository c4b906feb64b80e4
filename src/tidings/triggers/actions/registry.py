"""Which action types exist: the built-ins, ``register_action``, and the ``tidings.actions``
entry point group.

A package adds an action type without touching tidings by declaring an entry point::

    [project.entry-points."tidings.actions"]
    crm_sync = "mycompany.crm:sync"        # a callable: sync(ctx) -> mapping | None (or async)
    ticket = "mycompany.tickets:Ticket"    # a class: Ticket(options) with async run(ctx)

A class (or any factory registered with ``register_action(name, factory)``) is called once
with the trigger's options and may refuse them with a ValueError naming the option; a plain
callable takes no options and is called with the ``ActionContext`` of each job. Built-in names
cannot be replaced; a name registered in code wins over an entry point of the same name.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

from tidings.triggers.actions.base import (
    Action,
    ActionContext,
    ActionFactory,
    ActionOptionError,
    check_options,
)
from tidings.triggers.definitions import ActionSpec

__all__ = [
    "BUILTIN_ACTIONS",
    "ENTRY_POINT_GROUP",
    "action_types",
    "build_action",
    "callable_action",
    "register_action",
    "unregister_action",
    "validate_action",
]

log = logging.getLogger("tidings.triggers.actions")

ENTRY_POINT_GROUP = "tidings.actions"
BUILTIN_ACTIONS = ("email", "log", "publish", "webhook")

_registered: dict[str, ActionFactory] = {}
_entry_points: dict[str, ActionFactory] | None = None
_built: dict[str, Action] = {}  # (type + options as JSON) -> the action built from them
_lock = threading.Lock()


def _builtin(name: str) -> ActionFactory:
    # imported when first used: each built-in pulls in what it needs (smtplib, the webhook queue)
    if name == "email":
        from tidings.triggers.actions.email import EmailAction  # noqa: PLC0415

        return EmailAction
    if name == "log":
        from tidings.triggers.actions.log import LogAction  # noqa: PLC0415

        return LogAction
    if name == "publish":
        from tidings.triggers.actions.publish import PublishAction  # noqa: PLC0415

        return PublishAction
    from tidings.triggers.actions.webhook import WebhookAction  # noqa: PLC0415

    return WebhookAction


class _CallableAction:
    """A plain callable ``fn(ctx)`` (sync or async) as an action without options."""

    def __init__(self, name: str, fn: Callable[[ActionContext], Any]) -> None:
        self.name = name
        self.fn = fn

    async def run(self, ctx: ActionContext) -> Mapping[str, Any] | None:
        result = self.fn(ctx)
        if inspect.isawaitable(result):
            result = await result
        return result  # type: ignore[no-any-return]


def callable_action(name: str, fn: Callable[[ActionContext], Any]) -> ActionFactory:
    """A factory for ``fn(ctx)``: it takes no options (any option is refused at load)."""

    def factory(options: Mapping[str, Any]) -> Action:
        check_options(name, options, ())
        return _CallableAction(name, fn)

    return factory


def _as_factory(name: str, obj: Any) -> ActionFactory:
    if inspect.isclass(obj):
        return cast("ActionFactory", obj)
    if callable(obj):
        return callable_action(name, obj)
    raise TypeError(
        f"action {name!r}: expected a class taking the options or a callable taking the "
        f"ActionContext, got {type(obj).__name__}"
    )


def _load_entry_points() -> dict[str, ActionFactory]:
    global _entry_points
    if _entry_points is None:
        found: dict[str, ActionFactory] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in BUILTIN_ACTIONS:
                log.warning("entry point %s = %s: %r is a built-in action; ignored", ep.name,
                            ep.value, ep.name)  # fmt: skip
                continue
            try:
                found[ep.name] = _as_factory(ep.name, ep.load())
            except Exception as exc:  # a broken plugin must not stop the others
                log.error("action entry point %s = %s cannot be loaded: %s", ep.name, ep.value,
                          exc)  # fmt: skip
        _entry_points = found
    return _entry_points


def register_action(name: str, factory: ActionFactory | Callable[[ActionContext], Any]) -> None:
    """Add action type ``name``: a factory (a class) called with the options, or a callable
    taking the ``ActionContext`` (see the module docstring). Registering a name again replaces
    it (tests, reloads); built-in names are refused."""
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"register_action(name=): expected a name without spaces, got {name!r}")
    if name in BUILTIN_ACTIONS:
        raise ValueError(f"register_action(): {name!r} is a built-in action and cannot be replaced")
    with _lock:
        _registered[name] = _as_factory(name, factory)
        _built.clear()


def unregister_action(name: str) -> None:
    with _lock:
        _registered.pop(name, None)
        _built.clear()


def _factory(action_type: str) -> ActionFactory:
    if action_type in BUILTIN_ACTIONS:
        return _builtin(action_type)
    if action_type in _registered:
        return _registered[action_type]
    plugins = _load_entry_points()
    if action_type in plugins:
        return plugins[action_type]
    raise ValueError(
        f"unknown action type {action_type!r}; known: {', '.join(sorted(action_types()))} "
        f"(add one with register_action() or a {ENTRY_POINT_GROUP!r} entry point)"
    )


def action_types() -> set[str]:
    """Every action type a trigger may name now."""
    return {*BUILTIN_ACTIONS, *_registered, *_load_entry_points()}


def _spec_of(spec: Any) -> ActionSpec:
    if not isinstance(spec, ActionSpec):
        raise TypeError(f"expected an ActionSpec, got {type(spec).__name__}")
    if not isinstance(spec.type, str) or not spec.type:
        raise ValueError(f"action type: expected a non-empty string, got {spec.type!r}")
    return spec


def build_action(spec: ActionSpec) -> Action:
    """The action ``spec`` describes, built once per type and options and then reused."""
    spec = _spec_of(spec)
    try:
        cache_key = spec.type + "\0" + json.dumps(spec.options, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        cache_key = ""
    if cache_key and cache_key in _built:
        return _built[cache_key]
    factory = _factory(spec.type)
    try:
        action = factory(dict(spec.options or {}))
    except ActionOptionError:
        raise
    except (TypeError, ValueError) as exc:
        raise ActionOptionError(spec.type, None, str(exc)) from exc
    if not callable(getattr(action, "run", None)):
        raise TypeError(f"action {spec.type!r}: its factory returned an object without run(ctx)")
    if cache_key:
        with _lock:
            if len(_built) > 10_000:
                _built.clear()
            _built[cache_key] = action
    return action


def validate_action(spec: ActionSpec) -> None:
    """Refuse, at load, an unknown type or options the type refuses: a ValueError
    (``ActionOptionError`` with ``.option`` for a bad option) naming what is wrong."""
    build_action(spec)
