"""``TriggerIndex``: which triggers an event type concerns, answered with one dict lookup.

Exact patterns sit in a dict, globs in ``tidings.topics``' segment trie, and the answer for each
event type is cached (bounded), so a processor pays the pattern walk once per type, however
many triggers there are. Disabled triggers are kept (``get``, ``all``) but never matched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from tidings.event import Event
from tidings.topics import SubscriptionIndex, compile_pattern
from tidings.triggers.definitions import Trigger

# Per event type: each matching trigger with its compiled test (None: no condition).
_Plan = tuple[tuple[Trigger, Callable[[Event], bool] | None], ...]

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
        ``ConditionRuntimeError``): one trigger failing never hides the others."""
        plan = self._plans.get(event.type)
        if plan is None:
            plan = self._plan(event.type)
        found: list[tuple[Trigger, bool | Exception]] = []
        for trigger, test in plan:
            if test is None:
                found.append((trigger, True))
                continue
            try:
                found.append((trigger, test(event)))
            except RecursionError:
                found.append((trigger, trigger.condition.too_deep()))  # type: ignore[union-attr]
            except Exception as exc:  # recorded as the trigger's failure by the caller
                found.append((trigger, exc))
        return found

    def _plan(self, event_type: str) -> _Plan:
        plan = tuple(
            (t, None if t.condition is None else t.condition.test)
            for t in self._index.match(event_type)
        )
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
