"""Trigger definitions: a good list parses into frozen triggers and back; every bad field is
refused naming its path (and, for a condition, the position)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.triggers.definitions import (
    MAX_ACTIONS,
    ActionSpec,
    Trigger,
    TriggerError,
    parse_action,
    parse_trigger,
    parse_triggers,
    trigger_to_dict,
)

KNOWN = {"email", "log", "publish", "webhook"}

GOOD: list[dict[str, Any]] = [
    {
        "id": "big-payments",
        "pattern": "payment.*",
        "condition": "data.amount >= 1000",
        "description": "large payments go to finance",
        "actions": [
            {"type": "webhook", "name": "finance", "endpoint": "finance"},
            {"type": "log", "level": "warning", "extra": {"k": [1, 2.5, None, True]}},
        ],
        "compensation": {"type": "publish", "event_type": "payment.alert.retracted"},
        "partition_key": "chain_id",
    },
    {"id": "all", "pattern": "**", "enabled": False, "actions": [{"type": "log"}]},
]


def good() -> list[dict[str, Any]]:
    return copy.deepcopy(GOOD)


def test_a_good_list_parses() -> None:
    first, second = parse_triggers(good(), action_types=KNOWN)
    assert first.id == "big-payments" and first.pattern == "payment.*"
    assert first.condition is not None and first.condition.text == "data.amount >= 1000"
    assert first.actions == (
        ActionSpec("webhook", {"endpoint": "finance"}, "finance"),
        ActionSpec("log", {"level": "warning", "extra": {"k": [1, 2.5, None, True]}}),
    )
    assert first.compensation == ActionSpec("publish", {"event_type": "payment.alert.retracted"})
    assert first.partition_key == "chain_id" and first.enabled
    assert first.description == "large payments go to finance"
    assert second == Trigger(id="all", pattern="**", actions=(ActionSpec("log"),), enabled=False)
    assert {first, second} == {second, first}  # hashable despite the option dicts
    with pytest.raises(AttributeError):
        first.id = "x"  # type: ignore[misc]


def test_to_dict_round_trips_through_json() -> None:
    triggers = parse_triggers(good())
    again = [parse_trigger(json.loads(json.dumps(trigger_to_dict(t)))) for t in triggers]
    assert again == triggers
    assert trigger_to_dict(triggers[1]) == {
        "id": "all",
        "pattern": "**",
        "actions": [{"type": "log"}],
        "enabled": False,
    }


def _broken(path: tuple[Any, ...], value: Any, *, delete: bool = False) -> list[dict[str, Any]]:
    data: Any = good()
    node = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "value", "where", "message"),
    [
        ((1, "condition"), "(data.x == 1))", "triggers[1].condition", "unexpected ')'"),
        ((0, "actions", 1, "type"), "sms", "triggers[0].actions[1].type", "unknown action type"),
        ((0, "actions", 1, "type"), 5, "triggers[0].actions[1].type", "expected an action type"),
        ((0, "actions", 1, "type"), "SMS!", "triggers[0].actions[1].type", "is not an action"),
        ((0, "actions", 0, "name"), "a b", "triggers[0].actions[0].name", "is not a name"),
        ((0, "actions", 0, "when"), {1, 2}, "triggers[0].actions[0].when", "got a set"),
        ((0, "actions", 0, "ratio"), float("nan"), "triggers[0].actions[0].ratio", "finite"),
        ((0, "actions", 0, "deep"), {1: 2}, "triggers[0].actions[0].deep", "keys must be"),
        ((0, "actions", 0), "webhook", "triggers[0].actions[0]", "expected a mapping"),
        ((0, "actions"), [], "triggers[0].actions", "got an empty list"),
        ((0, "actions"), {"type": "log"}, "triggers[0].actions", "non-empty list"),
        ((0, "actions"), [{"type": "log"}] * (MAX_ACTIONS + 1), "triggers[0].actions", "more"),
        ((0, "compensation"), {"type": "sms"}, "triggers[0].compensation.type", "unknown"),
        ((0, "compensation"), {"url": "x"}, "triggers[0].compensation.type", "required"),
        ((0, "pattern"), "payment.*x", "triggers[0].pattern", "mixes '*' with text"),
        ((0, "pattern"), "", "triggers[0].pattern", "pattern is empty"),
        ((0, "pattern"), ["a"], "triggers[0].pattern", "expected an event type pattern"),
        ((0, "condition"), 5, "triggers[0].condition", "expected a condition as text"),
        ((0, "id"), "a:b", "triggers[0].id", "is not an id"),
        ((0, "id"), 7, "triggers[0].id", "expected an id"),
        ((0, "id"), "x" * 129, "triggers[0].id", "is not an id"),
        ((0, "enabled"), "yes", "triggers[0].enabled", "expected true or false"),
        ((0, "description"), 5, "triggers[0].description", "expected a string"),
        ((0, "description"), "x" * 5000, "triggers[0].description", "longer than"),
        ((0, "partition_key"), "a.b", "triggers[0].partition_key", "is not a field name"),
        ((0, "colour"), "red", "triggers[0].colour", "unknown key; expected one of: id,"),
        ((1, "id"), "big-payments", "triggers[1].id", "duplicate trigger id 'big-payments'"),
        ((1,), "x", "triggers[1]", "expected a mapping"),
    ],
)
def test_bad_fields_are_named(path: tuple[Any, ...], value: Any, where: str, message: str) -> None:
    with pytest.raises(TriggerError) as info:
        parse_triggers(_broken(path, value), action_types=KNOWN)
    err = info.value
    assert (err.path, message in err.message) == (where, True), str(err)
    assert str(err) == f"{err.path}: {err.message}"


@pytest.mark.parametrize("key", ["id", "pattern", "actions"])
def test_required_keys(key: str) -> None:
    with pytest.raises(TriggerError, match=rf"^triggers\[0\]\.{key}: required but missing"):
        parse_triggers(_broken((0, key), None, delete=True))


def test_condition_errors_carry_position_and_excerpt() -> None:
    with pytest.raises(TriggerError) as info:
        parse_triggers(_broken((1, "condition"), "(data.x == 1))"))
    err = info.value
    assert str(err).startswith("triggers[1].condition: unexpected ')' at position 13")
    assert err.position == 13
    assert err.excerpt.splitlines()[1].index("^") == 13


def test_unknown_action_type_lists_the_known_ones() -> None:
    with pytest.raises(TriggerError) as info:
        parse_triggers(_broken((0, "actions", 1, "type"), "sms"), action_types=KNOWN)
    assert str(info.value) == (
        "triggers[0].actions[1].type: unknown action type 'sms' "
        "(known: email, log, publish, webhook)"
    )
    # without action_types any well-formed type name passes (checked later by the actions)
    assert parse_triggers(_broken((0, "actions", 1, "type"), "sms"))[0].actions[1].type == "sms"


class _OptionError(ValueError):
    """Shaped like tidings.triggers.actions.ActionOptionError."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"log action: option {option!r}: {problem}")
        self.option, self.problem = option, problem


def test_validate_action_errors_are_reported_at_the_action() -> None:
    def validate(spec: ActionSpec) -> None:
        if spec.type == "webhook" and "url" not in spec.options and "endpoint" not in spec.options:
            raise ValueError("option url: required for a webhook (or give endpoint)")

    parse_triggers(good(), validate_action=validate)
    bad = _broken((0, "actions", 0), {"type": "webhook"})
    with pytest.raises(TriggerError) as info:
        parse_triggers(bad, validate_action=validate)
    assert str(info.value) == (
        "triggers[0].actions[0]: option url: required for a webhook (or give endpoint)"
    )

    def by_option(spec: ActionSpec) -> None:
        if "level" in spec.options:
            raise _OptionError("level", "expected debug, info, warning or error")

    with pytest.raises(TriggerError) as info:
        parse_triggers(good(), validate_action=by_option)
    assert str(info.value) == (
        "triggers[0].actions[1].level: expected debug, info, warning or error"
    )


def test_a_custom_path_prefix_and_a_single_action() -> None:
    with pytest.raises(TriggerError, match=r"^body\.actions\[0\]\.type: required"):
        parse_trigger({"id": "a", "pattern": "a", "actions": [{}]}, path="body")
    assert parse_action({"type": "log", "name": "x"}) == ActionSpec("log", {}, "x")
    with pytest.raises(TriggerError, match=r"^triggers: expected a list of triggers"):
        parse_triggers({"id": "a"})  # type: ignore[arg-type]


_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_option = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=3),
    max_leaves=6,
)
_action = st.builds(
    lambda kind, name, options: {"type": kind, **({"name": name} if name else {}), **options},
    st.sampled_from(sorted(KNOWN)),
    st.none() | _names,
    st.dictionaries(_names.filter(lambda n: n not in ("type", "name")), _option, max_size=3),
)
_trigger = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
        "pattern": st.sampled_from(["a", "a.*", "a.**", "**", "*.b"]),
        "actions": st.lists(_action, min_size=1, max_size=3),
    },
    optional={
        "condition": st.sampled_from(["data.x > 1", "type startswith 'a'", "exists(chain_id)"]),
        "compensation": _action,
        "enabled": st.booleans(),
        "description": st.text(max_size=20),
        "partition_key": _names,
    },
)


@settings(max_examples=60, deadline=None)
@given(_trigger)
def test_round_trip_property(raw: dict[str, Any]) -> None:
    trigger = parse_trigger(raw, action_types=KNOWN)
    assert parse_trigger(json.loads(json.dumps(trigger_to_dict(trigger)))) == trigger


_keys = st.sampled_from(["id", "pattern", "condition", "actions", "enabled", "x"]) | st.text(
    max_size=4
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, _option | st.lists(_option | _action, max_size=2), max_size=6))
def test_random_mappings_raise_only_trigger_error(raw: dict[str, Any]) -> None:
    try:
        parse_trigger(raw)
    except TriggerError as err:
        assert err.path.startswith("triggers[0]")
