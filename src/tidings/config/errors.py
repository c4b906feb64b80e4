"""How a settings mistake is reported: ``ConfigError`` and the helpers that word it.

Inside the package a broken rule is raised as ``Invalid(path, problem)``; the loader turns it
into a ``ConfigError`` naming the file (or environment variable) the value came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["MASK", "ConfigError", "Invalid", "Written", "dotted", "mask", "show"]

MASK = "***"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# Errors never show the values under these keys.
_HIDDEN = frozenset({"api_key", "api_keys", "secret", "auth", "headers", "password"})

#: How a check shows the value written at a key path: ``written(path, default_seconds)``.
Written = Callable[[tuple[Any, ...], float], str]


class ConfigError(ValueError):
    """Settings could not be loaded: ``source`` (file or variable), ``key`` path, ``problem``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(": ".join(part for part in (source, key, problem) if part))


class Invalid(Exception):
    """A rule beyond the schema is broken at ``path``; the loader adds the file name."""

    def __init__(self, path: tuple[Any, ...], problem: str) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem


def mask(value: str | None) -> str | None:
    return None if value is None else MASK


def dotted(path: tuple[Any, ...]) -> str:
    """``events.endpoints['order.*'][0].url``: keys that are not plain names are quoted."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(str(part)):
            text += f"[{str(part)!r}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def show(value: Any, path: tuple[Any, ...] = ()) -> str:
    """``value`` for an error message; under a secret-bearing key only its kind."""
    if any(part in _HIDDEN for part in path) and value is not None:
        kinds = {bool: "true or false", int: "a number", float: "a number", str: "a string"}
        return kinds.get(type(value), show(value)) + " (value not shown)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
