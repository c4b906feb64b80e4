"""What every action shares: the context a run gets, the protocol, the errors, option checks.

An action type is a *factory*: called once with a trigger's options (at load, so a bad option
is refused before any event arrives, naming the option), it returns an ``Action`` whose
``run(ctx)`` does the work for one job and returns the output to record (a JSON mapping, or
None). A run that raises is retried by the workers' RetryPolicy; ``PermanentActionError``
says retrying cannot help (a template names a field the event lacks, a header would carry a
line break) and the job goes dead at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tidings.event import Event
from tidings.triggers.definitions import ActionSpec

__all__ = [
    "Action",
    "ActionContext",
    "ActionFactory",
    "ActionOptionError",
    "PermanentActionError",
    "WebhookEnqueue",
    "check_options",
    "derived_id",
    "option_bool",
    "option_number",
    "option_str",
]


class PermanentActionError(Exception):
    """A failure no retry can mend: the job goes dead at once, with this message."""


class ActionOptionError(ValueError):
    """An action's options are wrong; ``option`` names the bad one (None: the whole mapping)."""

    def __init__(self, action_type: str, option: str | None, problem: str) -> None:
        where = f"option {option!r}" if option is not None else "options"
        super().__init__(f"{action_type} action: {where}: {problem}")
        self.action_type = action_type
        self.option = option
        self.problem = problem


class WebhookEnqueue(Protocol):
    """Hands one webhook delivery to the durable webhook queue, once per job key."""

    async def __call__(
        self,
        *,
        key: str,
        event: Event,
        position: int | None,
        endpoint: str | None = None,
        url: str | None = None,
    ) -> tuple[str, str, bool]:
        """(delivery id, endpoint id, whether it was new)."""
        ...


@dataclass(frozen=True, slots=True)
class ActionContext:
    """One attempt of one job: the event, where the job came from, and the ways out.

    ``publish`` appends a new event (to the store, in ``tidings serve`` and ``tidings
    process``); ``webhooks`` hands a delivery to the durable webhook queue. Either is None
    where the host has none; the actions needing it then fail with a clear error.
    """

    event: Event
    trigger_id: str
    action_index: int
    spec: ActionSpec
    key: str
    compensation: bool = False
    attempt: int = 1
    publish: Callable[[Event], Awaitable[Any]] | None = None
    webhooks: WebhookEnqueue | None = None
    position: int | None = None


@runtime_checkable
class Action(Protocol):
    async def run(self, ctx: ActionContext) -> Mapping[str, Any] | None: ...


ActionFactory = Callable[[Mapping[str, Any]], Action]


def derived_id(key: str, event: Event, salt: str = "") -> str:
    """A UUIDv7-shaped id that is the same every time for the same job key (and ``salt``):
    an action that runs twice (at-least-once) writes the same id twice, which the target
    refuses or ignores. Its time part is the event's time, so such ids sort like the events."""
    millis = int(event.time.timestamp() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(hashlib.sha256(f"{key}|{salt}".encode()).digest()[:10], "big")
    rand_a = rand >> 68 & 0xFFF  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    value = millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# ---------------------------------------------------------------------- option checks


def check_options(
    action_type: str, options: Mapping[str, Any], known: Collection[str]
) -> Mapping[str, Any]:
    """``options`` as a mapping whose keys are all ``known``, or an ActionOptionError."""
    if not isinstance(options, Mapping):
        raise ActionOptionError(
            action_type, None, f"expected a mapping of options, got {type(options).__name__}"
        )
    for name in options:
        if name not in known:
            raise ActionOptionError(
                action_type,
                str(name),
                f"unknown option; known: {', '.join(sorted(known))}",
            )
    return options


_MISSING: Any = object()


def option_str(
    action_type: str, options: Mapping[str, Any], name: str, default: Any = _MISSING
) -> Any:
    """A string option (non-empty), or ``default`` when absent (required without one)."""
    value = options.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise ActionOptionError(action_type, name, "is required: give a string")
        return default
    if not isinstance(value, str) or not value:
        raise ActionOptionError(action_type, name, f"expected a non-empty string, got {value!r}")
    return value


def option_bool(action_type: str, options: Mapping[str, Any], name: str, default: bool) -> bool:
    value = options.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ActionOptionError(action_type, name, f"expected true or false, got {value!r}")
    return value


def option_number(
    action_type: str,
    options: Mapping[str, Any],
    name: str,
    default: float | None,
    *,
    low: float = 0,
    integer: bool = False,
) -> Any:
    value = options.get(name, default)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= low:
        expected = "a whole number" if integer else "a number"
        raise ActionOptionError(action_type, name, f"expected {expected} > {low}, got {value!r}")
    return value
