"""Actions a trigger starts: ``webhook``, ``publish``, ``email``, ``log``, and your own.

Each built-in is one module; ``registry`` knows the types (``register_action``, the
``tidings.actions`` entry point group) and checks a trigger's options at load
(``validate_action``). ``base`` holds the ``ActionContext`` a run gets and the errors.
"""

from __future__ import annotations

from tidings.triggers.actions.base import (
    Action,
    ActionContext,
    ActionFactory,
    ActionOptionError,
    PermanentActionError,
    WebhookEnqueue,
    derived_id,
)
from tidings.triggers.actions.registry import (
    BUILTIN_ACTIONS,
    ENTRY_POINT_GROUP,
    action_types,
    build_action,
    callable_action,
    register_action,
    unregister_action,
    validate_action,
)
from tidings.triggers.actions.templates import Template, TemplateError

__all__ = [
    "BUILTIN_ACTIONS",
    "ENTRY_POINT_GROUP",
    "Action",
    "ActionContext",
    "ActionFactory",
    "ActionOptionError",
    "PermanentActionError",
    "Template",
    "TemplateError",
    "WebhookEnqueue",
    "action_types",
    "build_action",
    "callable_action",
    "derived_id",
    "register_action",
    "unregister_action",
    "validate_action",
]
