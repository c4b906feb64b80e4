"""Copies of an event that equal its JSON round trip, without the codec where the payload
is plain JSON values: how the memory transport isolates each handler (see the package
docstring)."""

from __future__ import annotations

import math
from datetime import UTC
from typing import Any

import msgspec

from tidings.event import Event, event_class


class _NotPlain(Exception):
    """A value whose JSON round trip is not itself: the codec has to decide."""


_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what msgspec encodes as a JSON integer


def _plain_copy(value: Any) -> Any:
    """A deep copy of ``value`` if ``decode(encode(value))`` would equal it exactly."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is int:
        if _INT_MIN <= value <= _INT_MAX:
            return value
    elif kind is float:
        if math.isfinite(value):
            return value
    elif kind is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _NotPlain
            out[k] = _plain_copy(v)
        return out
    elif kind is list:
        return [_plain_copy(v) for v in value]
    raise _NotPlain


_SCALAR_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    bool: (bool,),
    float: (float,),
    str | None: (str, type(None)),
    int | None: (int, type(None)),
    bool | None: (bool, type(None)),
    float | None: (float, type(None)),
}
_JSON_TYPES: tuple[Any, ...] = (Any, dict, list, dict[str, Any], list[Any])
_JSON_TYPES += tuple(t | None for t in _JSON_TYPES[1:])


class _Plan:
    """How events of one (class, type) are copied; None fields mean: use the codec."""

    __slots__ = ("json", "scalars", "typed")

    def __init__(
        self,
        typed: bool,
        scalars: tuple[tuple[str, tuple[type, ...]], ...],
        json: tuple[str, ...],
    ) -> None:
        self.typed = typed  # the payload is in typed fields: ``data`` must stay None
        self.scalars = scalars  # typed fields holding one exact scalar type
        self.json = json  # fields holding any JSON value (dicts and lists are deep-copied)


_PLANS: dict[tuple[type[Event], str], _Plan | None] = {}
_UNPLANNED: Any = object()


def _plan_for(cls: type[Event], type_name: str) -> _Plan | None:
    key = (cls, type_name)
    try:
        return _PLANS[key]
    except KeyError:
        pass
    plan: _Plan | None = None
    # decode() builds the class registered for the type (plain Event if none) and checks it.
    if (
        (event_class(type_name) or Event) is cls
        and type_name
        and not any(c.isspace() for c in type_name)
    ):
        scalars: list[tuple[str, tuple[type, ...]]] = []
        json = ["metadata"]
        ok = True
        if cls.__data_fields__:
            try:
                fields = {f.name: f.type for f in msgspec.structs.fields(cls)}
            except Exception:
                ok = False
            else:
                for name in cls.__data_fields__:
                    hint = fields[name]
                    if hint in _SCALAR_TYPES:
                        scalars.append((name, _SCALAR_TYPES[hint]))
                    elif hint in _JSON_TYPES:
                        json.append(name)
                    else:
                        ok = False
                        break
        else:
            json.append("data")
        if ok:
            plan = _Plan(bool(cls.__data_fields__), tuple(scalars), tuple(json))
    if len(_PLANS) > 10_000:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _snapshot(event: Event) -> tuple[Event, tuple[str, ...]] | None:
    """A private copy of ``event`` equal to its JSON round trip, and its fields to deep-copy.

    None when only the codec can say what a subscriber would get.
    """
    cls = type(event)
    plan = _PLANS.get((cls, event.type), _UNPLANNED)
    if plan is _UNPLANNED:
        plan = _plan_for(cls, event.type)
    if plan is None or event.time.tzinfo is not UTC or not event.id or not event.source:
        return None
    if event.extensions is not None:
        return None  # the codec checks extension names and values, as a real broker's would
    if plan.typed and event.data is not None:
        return None  # encode() rejects it; let it say so
    for name, allowed in plan.scalars:
        value = getattr(event, name)
        kind = type(value)
        if kind not in allowed:
            return None
        if kind is float:
            if not math.isfinite(value):
                return None
        elif kind is int and not _INT_MIN <= value <= _INT_MAX:
            return None
    source: Any = event
    copy: Event = source.__copy__()  # msgspec's C-level shallow copy
    deep: tuple[str, ...] = ()
    for name in plan.json:
        value = getattr(event, name)
        if value is None:
            continue
        if name == "metadata" and type(value) is not dict:
            return None
        try:
            fresh = _plain_copy(value)
        except (_NotPlain, RecursionError):
            return None
        if fresh is not value:
            setattr(copy, name, fresh)
            deep += (name,)
    return copy, deep
