"""``load``: settings from a YAML file plus ``TIDINGS_*`` environment variables.

Reads the file (duplicate keys refused, ``${VAR}`` interpolated), applies the environment
overrides and seed 002's ``event_broker`` keys, converts to ``Settings`` and runs each
section's checks; every mistake becomes one ``ConfigError`` naming where the value came from,
the key path and what was expected.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import yaml

from tidings.config.bus import RetrySettings, check_broker, check_bus
from tidings.config.durations import DURATION_HELP, Duration, dec_hook
from tidings.config.errors import ConfigError, Invalid, dotted, show
from tidings.config.server import check_server, check_store
from tidings.config.settings import Settings
from tidings.config.triggers import check_processor
from tidings.config.webhooks import check_events

__all__ = ["CONFIG_ENV", "ENV_PREFIX", "load"]

ENV_PREFIX = "TIDINGS_"
CONFIG_ENV = "TIDINGS_CONFIG"  # names the config file; never read as a setting
# The CLI's client variables (the server to talk to, the key to use): not settings either.
CLIENT_ENV = frozenset({"TIDINGS_URL", "TIDINGS_API_KEY"})

KeyPath = tuple[str, ...]


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (default: ``$TIDINGS_CONFIG``, else no file), apply ``TIDINGS_*``
    overrides from ``env`` (default: ``os.environ``), validate, and return the settings.

    Raises ``ConfigError`` for every user mistake.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if path is None or path == "":
        path = environ.get(CONFIG_ENV) or None
    return _Loader(None if path is None else Path(path), environ).run()


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which PyYAML would silently overwrite."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            continue  # let the schema report it
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first given on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_StrictYamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)

# ${NAME}, ${NAME:-default}, $$ (a literal $), or a malformed ${...} (group 4).
_REFERENCE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|(\{[^}]*\}?))")

# seed 002 key -> tidings key; values are copied, the event_broker section stays as written.
_LEGACY: list[tuple[KeyPath, KeyPath]] = [
    (("event_broker", "mode"), ("bus", "mode")),
    (("event_broker", "worker_count"), ("bus", "workers")),
    (("event_broker", "buffer_size"), ("bus", "buffer_size")),
    (("event_broker", "instance_id"), ("instance_id",)),
    *(
        (("event_broker", "retry_policy", name), ("bus", "retry", name))
        for name in RetrySettings.__struct_fields__
    ),
]

_SETTINGS_TYPE = mi.type_info(Settings)
_MISSING = object()


def _describe(tp: mi.Type) -> str:
    if isinstance(tp, mi.UnionType):
        # Leave "null" out: an optional key is better left out than set to null.
        members = [_describe(t) for t in tp.types if not isinstance(t, mi.NoneType)]
        return " or ".join(members) or "null"
    if isinstance(tp, mi.IntType | mi.FloatType):
        noun = "an integer" if isinstance(tp, mi.IntType) else "a number"
        if tp.ge is not None and tp.le is not None:
            return f"{noun} from {tp.ge} to {tp.le}"
        bounds = [
            f"{op} {bound}"
            for op, bound in ((">=", tp.ge), (">", tp.gt), ("<=", tp.le), ("<", tp.lt))
            if bound is not None
        ]
        return " ".join([noun, *bounds])
    if isinstance(tp, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in tp.values)
    if isinstance(tp, mi.CustomType) and tp.cls is Duration:
        return f"a duration ({DURATION_HELP})"
    simple: dict[type[mi.Type], str] = {
        mi.BoolType: "true or false",
        mi.StrType: "a string",
        mi.NoneType: "null",
        mi.StructType: "a mapping",
        mi.DictType: "a mapping",
        mi.ListType: "a list",
        mi.AnyType: "any value",
    }
    return simple.get(type(tp), str(tp))


def _container(tp: mi.Type) -> mi.Type:
    """The mapping/list member of an optional section, to walk into it."""
    if isinstance(tp, mi.UnionType):
        for member in tp.types:
            if isinstance(member, mi.StructType | mi.DictType | mi.ListType):
                return member
    return tp


def _type_at(path: tuple[Any, ...]) -> mi.Type | None:
    """The schema type of the value at ``path``, or None if the schema has no such key."""
    tp: mi.Type = _SETTINGS_TYPE
    for key in path:
        tp = _container(tp)
        if isinstance(tp, mi.StructType):
            field = next((f for f in tp.fields if f.encode_name == key), None)
            if field is None:
                return None
            tp = field.type
        elif isinstance(tp, mi.DictType):
            tp = tp.value_type
        elif isinstance(tp, mi.ListType):
            tp = tp.item_type
        elif isinstance(tp, mi.AnyType):
            return tp
        else:
            return None
    return tp


def _accepts_text(tp: mi.Type | None) -> bool:
    """True if a string is a valid value as it stands, so an env value must stay text."""
    if isinstance(tp, mi.UnionType):
        return any(_accepts_text(t) for t in tp.types)
    return isinstance(tp, mi.StrType) or (isinstance(tp, mi.CustomType) and tp.cls is Duration)


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        if isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
            continue
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[(.*?)\]")
_VALIDATION = re.compile(r"^(?P<message>.*?)(?: - at `(?:key` in `)?\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`")
_REQUIRED = re.compile(r"Object missing required field `(?P<name>[^`]*)`")
_ANY_KEY = "..."  # how msgspec writes a mapping key in an error path


def _replaced(data: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A copy of ``data`` with the value at ``path`` replaced; nothing else is copied."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        return {**data, head: _replaced(data[head], rest, new)}
    items = list(data)
    items[head] = _replaced(items[head], rest, new)
    return items


def _parse_path(text: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for name, index, other in _PATH_TOKEN.findall(text):
        parts.append(name or (int(index) if index else other))
    return tuple(parts)


class _Loader:
    """One load: the raw data plus where each value came from, for error messages."""

    def __init__(self, path: Path | None, env: Mapping[str, str]) -> None:
        self.path = path
        self.name = str(path) if path is not None else ""
        self.env = env
        self.raw: dict[str, Any] = {}
        self.origins: dict[tuple[Any, ...], str] = {}  # key path -> environment variable
        self.moved: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # bus path -> seed-002 path

    def run(self) -> Settings:
        if self.path is not None:
            self.raw = self._interpolate(self._read(self.path), ())
        self._apply_env()
        self._apply_legacy()
        try:
            settings = msgspec.convert(self.raw, Settings, strict=False, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            raise self._from_validation(exc) from None
        self._check(settings)
        return settings

    # reading and interpolation

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(self.name, "", "config file not found") from None
        except IsADirectoryError:
            raise ConfigError(self.name, "", "is a directory, expected a YAML file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(self.name, "", f"not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise ConfigError(self.name, "", f"cannot read: {exc.strerror}") from None
        try:
            data = yaml.load(text, Loader=_StrictYamlLoader)  # a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{self.name}:{mark.line + 1}:{mark.column + 1}" if mark else self.name
            problem = exc.problem or exc.context or "syntax error"
            raise ConfigError(where, "", f"invalid YAML: {problem}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(self.name, "", f"invalid YAML: {exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(
                self.name, "", f"expected a mapping of settings at the top, got {show(data)}"
            )
        return data

    def _interpolate(self, value: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(value, dict):
            return {k: self._interpolate(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._interpolate(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return _REFERENCE.sub(lambda m: self._resolve(m, path), value)
        return value

    def _resolve(self, match: re.Match[str], path: tuple[Any, ...]) -> str:
        if match.group(1):
            return "$"
        if match.group(4) is not None:
            raise ConfigError(
                self.name,
                dotted(path),
                f"bad variable reference {match.group(0)!r}: expected ${{NAME}} or "
                "${NAME:-default} (write $$ for a literal $)",
            )
        name, default = match.group(2), match.group(3)
        value = self.env.get(name)
        if value is None and default is None and name == "HOSTNAME":
            value = socket.gethostname()  # shells set HOSTNAME without exporting it
        if default is not None and not value:
            return default
        if value is None:
            raise ConfigError(
                self.name,
                dotted(path),
                f"environment variable {name} is not set (set it, or give a default: "
                f"${{{name}:-default}})",
            )
        return value

    # environment overrides

    def _apply_env(self) -> None:
        for var in sorted(self.env):
            name = var.upper()
            if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or name in CLIENT_ENV:
                continue
            path = tuple(part.lower() for part in var[len(ENV_PREFIX) :].split("__"))
            if not all(path):
                raise ConfigError(
                    f"environment variable {var}",
                    "",
                    "empty key: separate levels with a double underscore, as in "
                    "TIDINGS_BUS__RETRY__MAX_RETRIES",
                )
            self._set(path, self._env_value(path, self.env[var]), var)

    @staticmethod
    def _env_value(path: KeyPath, text: str) -> Any:
        if _accepts_text(_type_at(path)):
            return text  # TIDINGS_INSTANCE_ID=123 stays the string "123"
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return value if value is None or isinstance(value, str | int | float | bool) else text

    def _set(self, path: tuple[Any, ...], value: Any, var: str) -> None:
        node = self.raw
        for i, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"environment variable {var}",
                    dotted(path),
                    f"cannot set it: {dotted(path[: i + 1])} is {show(child)} in "
                    f"{self.name or 'the settings'}, not a mapping",
                )
            node = child
        node[path[-1]] = value
        self.origins[path] = var

    # seed 002

    def _apply_legacy(self) -> None:
        if not isinstance(self.raw.get("event_broker"), dict):
            return
        for old, new in _LEGACY:
            value = _get(self.raw, old)
            if value is _MISSING or value is None:
                continue
            if _get(self.raw, new) is not _MISSING:
                old_env, new_env = old in self.origins, new in self.origins
                if new_env and not old_env:
                    continue  # an environment variable beats the file
                if old_env == new_env:
                    raise ConfigError(
                        self._source(old),
                        dotted(old),
                        f"sets the same thing as {dotted(new)}; keep only {dotted(new)}",
                    )
            node = self.raw
            for i, key in enumerate(new[:-1]):
                if node.get(key) is None:
                    node[key] = {}
                    self.moved[new[: i + 1]] = old[: i + 1]
                node = node[key]
                if not isinstance(node, dict):
                    break  # the schema reports the non-mapping
            else:
                node[new[-1]] = value
                self.moved[new] = old
                if old in self.origins:
                    self.origins[new] = self.origins[old]

    # errors

    def _source(self, path: tuple[Any, ...]) -> str:
        var = self.origins.get(path)
        if var is not None:
            return f"environment variable {var}"
        return self.name or "settings"

    def _error(self, path: tuple[Any, ...], problem: str) -> ConfigError:
        shown = self.moved.get(path, path)
        return ConfigError(self._source(path), dotted(shown), problem)

    def _locate(self, path: tuple[Any, ...], exc: msgspec.ValidationError) -> tuple[Any, ...]:
        """msgspec writes a mapping key as ``[...]``; find which key by converting the mapping
        one entry at a time, until the same error comes back."""
        while _ANY_KEY in path:
            i = path.index(_ANY_KEY)
            mapping = _get(self.raw, path[:i])
            if not isinstance(mapping, dict):
                break
            for key, value in mapping.items():
                try:
                    trial = _replaced(self.raw, path[:i], {key: value})
                    msgspec.convert(trial, Settings, strict=False, dec_hook=dec_hook)
                except msgspec.ValidationError as again:
                    if str(again) == str(exc):
                        path = (*path[:i], key, *path[i + 1 :])
                        break
            else:
                break
        return path

    def _from_validation(self, exc: msgspec.ValidationError) -> ConfigError:
        found = _VALIDATION.match(str(exc))
        message = found.group("message") if found else str(exc)
        path = self._locate(_parse_path(found.group("path") or ""), exc) if found else ()
        required = _REQUIRED.fullmatch(message)
        if required:
            key = (*path, required.group("name"))
            return self._error(
                key, f"required but missing: expected {_describe(_type_at(key) or mi.AnyType())}"
            )
        unknown = _UNKNOWN.fullmatch(message)
        if unknown:
            name = unknown.group("name")
            section = _container(_type_at(path) or _SETTINGS_TYPE)
            known = (
                [f.encode_name for f in section.fields]
                if isinstance(section, mi.StructType)
                else []
            )
            close = difflib.get_close_matches(name.lower(), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return self._error(
                (*path, name), f"unknown key{hint}; expected one of: {', '.join(known)}"
            )
        if "at `key` in" in str(exc):
            return self._error(path, "keys must be strings")
        tp, value = _type_at(path), _get(self.raw, path)
        if tp is None or value is _MISSING:
            return self._error(path, message[:1].lower() + message[1:])
        return self._error(path, f"expected {_describe(tp)}, got {show(value, path)}")

    def _check(self, settings: Settings) -> None:
        """Rules across keys, which the per-key schema cannot express; each section's module
        holds its own and reports a broken one as ``Invalid``."""
        try:
            check_bus(settings.bus, self._written)
            check_broker(settings.event_broker)
            endpoints = check_events(settings.events, self._written)
            check_server(settings.server, settings.events.timeout, endpoints, self._written)
            check_store(settings.store)
            check_processor(settings.processor, self._written)
        except Invalid as exc:
            raise self._error(exc.path, exc.problem) from None

    def _written(self, path: tuple[Any, ...], seconds: float) -> str:
        raw = _get(self.raw, path)
        return show(raw) if raw is not _MISSING else f"the default {seconds:g}s"
