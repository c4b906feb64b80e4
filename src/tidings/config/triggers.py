"""The ``triggers`` and ``processor`` sections: trigger definitions and how they are run.

``triggers`` is kept as the list of mappings the file holds: config is the ground floor and
may not import ``tidings.triggers``, so the definitions are checked by
``tidings.triggers.definitions.parse_triggers``, which ``tidings config check``, ``tidings
serve`` and ``tidings process`` call on ``settings.triggers`` (naming ``triggers[2].condition``
and the position in the expression). ``processor`` is checked here, like every other section.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import msgspec

from tidings.config.bus import RetrySettings
from tidings.config.errors import MASK, Invalid, Written
from tidings.urls import is_secret_name, redact_url

__all__ = [
    "PARTITION_KEYS",
    "PROCESSOR_STARTS",
    "ProcessorSettings",
    "TriggerDefinition",
    "check_processor",
    "is_secret_option",
    "redact_processor",
    "redact_triggers",
]

#: One trigger as written (id, pattern, condition, actions, ...); see docs/triggers.md.
TriggerDefinition = dict[str, Any]

#: Where a processor group begins the first time it runs (tidings.triggers.starts).
PROCESSOR_STARTS: Final = ("end", "beginning")
#: The partition keys seed 001 names; any other extension name is accepted too.
PARTITION_KEYS: Final = ("chain_id", "registry")
_FIELD: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Action options under these keys are secrets: never shown by config check or the API.
_SECRET_KEYS: Final = frozenset({"password", "secret", "api_key", "auth", "headers", "token"})


def is_secret_option(key: str) -> bool:
    """An action option holding a credential: the names above, and every name the URL and
    config redaction treats as one (``client_secret``, ``access_token``, ``apiKey``,
    ``Authorization``, ...), which plugins use. ``*_env`` names a variable, not a secret."""
    lowered = key.lower()
    if lowered.endswith("_env"):
        return False
    return lowered in _SECRET_KEYS or is_secret_name(key) or is_secret_name(_camel(key))


def _camel(key: str) -> str:
    """``apiKey`` as ``api_Key``: its words, for ``is_secret_name``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)


class ProcessorSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``processor`` section: where matched actions queue and how many run at once."""

    # "store": a table in the store's own database (the embedded default); or a redis:// URL
    queue: str = "store"
    workers: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 4  # actions run at once
    partitions: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1  # shares of the event stream
    partition_by: str = "chain_id"  # chain_id | registry | an extension name
    retry: RetrySettings = msgspec.field(default_factory=RetrySettings)  # per action
    # where the group begins the first time it ever runs: end (new events only) | beginning
    start: str = "end"


def check_processor(processor: ProcessorSettings, written: Written) -> None:
    """Rules the schema cannot say; a broken one raises ``Invalid`` with its key path."""
    queue = processor.queue
    if queue != "store":
        parts = urlsplit(queue)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise Invalid(
                ("processor", "queue"),
                f"expected 'store' or a redis:// URL with a host, got {redact_url(queue)!r}",
            )
    if processor.start not in PROCESSOR_STARTS:
        raise Invalid(
            ("processor", "start"),
            f"expected {' or '.join(PROCESSOR_STARTS)}, got {processor.start!r}; use "
            "'tidings triggers backfill' or 'replay' to run triggers over history",
        )
    if not _FIELD.fullmatch(processor.partition_by):
        raise Invalid(
            ("processor", "partition_by"),
            f"expected {' or '.join(PARTITION_KEYS)} or another extension name (lowercase "
            f"letters, digits, '_'), got {processor.partition_by!r}",
        )
    retry = processor.retry
    if retry.max_delay < retry.initial_delay:
        path = ("processor", "retry", "max_delay")
        raise Invalid(
            path,
            f"expected a duration >= initial_delay ({retry.initial_delay:g}s), "
            f"got {written(path, retry.max_delay)}",
        )
    try:
        retry.policy()
    except ValueError as exc:
        raise Invalid(("processor", "retry"), str(exc)) from None


def redact_processor(processor: ProcessorSettings) -> ProcessorSettings:
    return msgspec.structs.replace(processor, queue=redact_url(processor.queue))


def _redact(value: Any, key: str = "") -> Any:
    if is_secret_option(key) and value is not None:
        return MASK
    if isinstance(value, Mapping):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def redact_triggers(triggers: list[TriggerDefinition]) -> list[TriggerDefinition]:
    """A copy safe to print: action options named like secrets become ``***`` and URL
    credentials are masked (an email action's SMTP password, a webhook's secret)."""
    return [_redact_trigger(trigger) for trigger in triggers]


def _redact_trigger(trigger: Any) -> Any:
    """A trigger's own fields (``partition_key``, ...) are not options: only URLs are masked
    there; names like secrets are judged inside its actions."""
    if not isinstance(trigger, Mapping):
        return _redact(trigger)
    return {k: _redact(v) for k, v in trigger.items()}
