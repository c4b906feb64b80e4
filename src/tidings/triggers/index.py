"""``TriggerIndex``: which triggers an event type concerns, answered with one dict lookup.

Exact patterns sit in a dict, globs in ``tidings.topics``' segment trie, and the answer for each
event type is cached (bounded), so a processor pays the pattern walk once per type, however
many triggers there are; triggers that share a condition text share its evaluation. Disabled
triggers are kept (``get``, ``all``) but never matched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from tidings.event import Event
from tidings.topics import SubscriptionIndex, compile_pattern
from tidings.triggers.conditions import Condition
from tidings.triggers.definitions import Trigger


class _Plan:
    """What one event type costs: its distinct conditions, each evaluated once per event, and
    each matching trigger with the slot of its condition's answer (-1: no condition)."""

    __slots__ = ("conditions", "entries", "tests")

    def __init__(self, triggers: Sequence[Trigger]) -> None:
        slots: dict[str, int] = {}
        self.conditions: list[Condition] = []
        entries: list[tuple[Trigger, int]] = []
        for trigger in triggers:
            condition = trigger.condition
            if condition is None:
                entries.append((trigger, -1))
                continue
            slot = slots.get(condition.text)
            if slot is None:
                slot = slots[condition.text] = len(self.conditions)
                self.conditions.append(condition)
            entries.append((trigger, slot))
        self.tests: tuple[Callable[[Event], bool], ...] = tuple(c.test for c in self.conditions)
        self.entries = tuple(entries)


__all__ = ["TriggerIndex"]


class TriggerIndex:
    """An immutable set of triggers indexed by pattern; build a new one to change it."""

    def __init__(self, triggers: Iterable[Trigger], *, cache_size: int = 10_000) -> None:
        self._all: dict[str, Trigger] = {}
        self._index: SubscriptionIndex[Trigger] = SubscriptionIndex(cache_size)
        self._plans: dict[str, _Plan] = {}
        self._cache_size = cache_size
        for trigger in triggers:
            if trigger.id in self._all:
                raise ValueError(f"duplicate trigger id {trigger.id!r}")
            self._all[trigger.id] = trigger
            if trigger.enabled:
                self._index.add(compile_pattern(trigger.pattern), trigger)

    def match(self, event_type: str) -> Sequence[Trigger]:
        """The enabled triggers whose pattern matches ``event_type``, in definition order."""
        return self._index.match(event_type)

    def evaluate(self, event: Event) -> list[tuple[Trigger, bool | Exception]]:
        """Each matching trigger with its condition's answer, or the error it raised (a
        ``ConditionRuntimeError``): one trigger failing never hides the others. Triggers
        sharing a condition text share one evaluation."""
        plan = self._plans.get(event.type)
        if plan is None:
            plan = self._plan(event.type)
        answers: list[bool | Exception] = []
        for test in plan.tests:
            try:
                answers.append(test(event))
            except RecursionError:
                answers.append(plan.conditions[len(answers)].too_deep())
            except Exception as exc:  # recorded as the trigger's failure by the caller
                answers.append(exc)
        return [(t, True if slot < 0 else answers[slot]) for t, slot in plan.entries]

    def _plan(self, event_type: str) -> _Plan:
        plan = _Plan(self._index.match(event_type))
        if len(self._plans) >= self._cache_size:
            self._plans.clear()  # many distinct types: start over rather than grow
        self._plans[event_type] = plan
        return plan

    def matched(self, event: Event) -> list[Trigger]:
        """The triggers whose condition holds; one that raises counts as not matched (use
        ``evaluate`` to see the errors)."""
        return [t for t, answer in self.evaluate(event) if answer is True]

    def get(self, trigger_id: str) -> Trigger | None:
        return self._all.get(trigger_id)

    def all(self) -> list[Trigger]:
        """Every trigger, enabled or not, in definition order."""
        return list(self._all.values())

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Trigger]:
        return iter(self._all.values())

    def __contains__(self, trigger_id: object) -> bool:
        return trigger_id in self._all
