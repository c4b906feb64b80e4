"""TriggerIndex: matching by exact type and glob, in definition order, enabled only; evaluate
keeps one trigger's error from hiding the others."""

from __future__ import annotations

import pytest

from tidings.event import Event
from tidings.triggers.conditions import ConditionRuntimeError, compile_condition
from tidings.triggers.definitions import ActionSpec, Trigger
from tidings.triggers.index import TriggerIndex

LOG = (ActionSpec("log"),)


def _t(tid: str, pattern: str, condition: str | None = None, *, enabled: bool = True) -> Trigger:
    cond = None if condition is None else compile_condition(condition)
    return Trigger(tid, pattern, LOG, cond, enabled=enabled)


TRIGGERS = [
    _t("exact", "idxtest.order.placed"),
    _t("star", "idxtest.order.*", "data.amount > 10"),
    _t("dstar", "idxtest.**"),
    _t("off", "idxtest.order.placed", enabled=False),
    _t("other", "idxtest.user.created"),
    _t("bad", "idxtest.order.placed", "data.amount startswith 'x'"),
    _t("all", "**", "registry == 'identity'"),
]


def test_match_by_exact_type_and_glob_in_definition_order() -> None:
    index = TriggerIndex(TRIGGERS)
    ids = [t.id for t in index.match("idxtest.order.placed")]
    assert ids == ["exact", "star", "dstar", "bad", "all"]
    assert [t.id for t in index.match("idxtest.user.created")] == ["dstar", "other", "all"]
    assert [t.id for t in index.match("elsewhere")] == ["all"]
    assert index.match("idxtest.order.placed") is index.match("idxtest.order.placed")  # cached


def test_disabled_triggers_are_kept_but_never_matched() -> None:
    index = TriggerIndex(TRIGGERS)
    assert "off" in index and index.get("off") is TRIGGERS[3]
    assert len(index) == len(TRIGGERS) and list(index) == TRIGGERS == index.all()
    assert index.get("nope") is None


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate trigger id 'exact'"):
        TriggerIndex([TRIGGERS[0], TRIGGERS[0]])


def test_evaluate_answers_per_trigger_and_keeps_errors_apart() -> None:
    index = TriggerIndex(TRIGGERS)
    event = Event(type="idxtest.order.placed", data={"amount": 50}, extensions={"registry": "x"})
    answers = {t.id: answer for t, answer in index.evaluate(event)}
    assert set(answers) == {"exact", "star", "dstar", "bad", "all"}
    assert answers["exact"] is True and answers["star"] is True and answers["all"] is False
    err = answers["bad"]
    assert isinstance(err, ConditionRuntimeError) and err.path == "data.amount", err
    assert [t.id for t in index.matched(event)] == ["exact", "star", "dstar"]


def test_evaluate_turns_a_recursion_error_into_a_condition_error() -> None:
    def deep() -> list[object]:
        value: list[object] = []
        for _ in range(5000):
            value = [value]
        return value

    index = TriggerIndex([_t("deep", "idxtest.deep", "data.a == data.b")])
    event = Event(type="idxtest.deep", data={"a": deep(), "b": deep()})
    [(_, answer)] = index.evaluate(event)
    assert isinstance(answer, ConditionRuntimeError), answer


def test_many_distinct_types_keep_the_cache_bounded() -> None:
    index = TriggerIndex([_t("all", "**")], cache_size=10)
    for i in range(100):
        assert [t.id for t, _ in index.evaluate(Event(type=f"idxtest.t{i}"))] == ["all"]
    assert len(index._plans) <= 10
