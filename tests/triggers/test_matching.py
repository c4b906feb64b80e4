"""match_events: jobs keyed event:trigger:index, a raising condition reported not raised,
invalidated events start nothing, ``only`` narrows to chosen triggers."""

from __future__ import annotations

from tidings.event import Event
from tidings.store.base import Recorded
from tidings.triggers.conditions import compile_condition
from tidings.triggers.definitions import ActionSpec, Trigger
from tidings.triggers.index import TriggerIndex
from tidings.triggers.matching import match_events

TWO = (ActionSpec("log"), ActionSpec("log", name="second"))


def _index() -> TriggerIndex:
    return TriggerIndex(
        [
            Trigger("big", "mtest.order.*", TWO, compile_condition("data.amount > 10")),
            Trigger("bad", "mtest.order.*", TWO, compile_condition("data.amount startswith 'x'")),
            Trigger("any", "mtest.**", (ActionSpec("log"),)),
        ]
    )


def _rec(position: int, amount: object, *, invalidated: bool = False) -> Recorded:
    event = Event(type="mtest.order.placed", data={"amount": amount})
    return Recorded(position=position, event=event, invalidated=invalidated)


def test_jobs_keyed_by_event_trigger_and_action_index() -> None:
    big, small = _rec(1, 50), _rec(2, 5)
    out = match_events(_index(), [big, small], partition_of={big.event.id: "1"})
    keys = [j.key for j in out.jobs]
    assert keys == [
        f"{big.event.id}:big:0",
        f"{big.event.id}:big:1",
        f"{big.event.id}:any:0",
        f"{small.event.id}:any:0",
    ]
    assert [j.position for j in out.jobs] == [1, 1, 1, 2]
    assert out.jobs[0].partition == "1" and out.jobs[-1].partition is None
    assert out.matches == 3 and out.events == 2
    # the raising condition is reported once per event, naming the trigger; nothing raised
    assert [(f.trigger.id, f.recorded.position) for f in out.failures] == [("bad", 1), ("bad", 2)]
    assert "startswith" in out.failures[0].error


def test_invalidated_events_start_nothing_and_only_narrows() -> None:
    out = match_events(_index(), [_rec(1, 50, invalidated=True)])
    assert out.jobs == [] and out.failures == [] and out.events == 1
    out = match_events(_index(), [_rec(2, 50)], only=frozenset({"any"}))
    assert [j.trigger_id for j in out.jobs] == ["any"] and out.failures == []
