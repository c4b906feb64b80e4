"""From a stored event to the jobs it starts: the one step the processor, replay and backfill
share, so all three key jobs the same way (``event:trigger:index``) and a replayed or
backfilled event can never run an action a second time.

A condition that raises at run time (a type mismatch) is returned as a ``Mismatch``, not
raised: the caller records it as that trigger's failed result, and the event's other triggers
go on as if nothing happened.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tidings.store.base import Recorded
from tidings.triggers.definitions import Trigger
from tidings.triggers.index import TriggerIndex
from tidings.triggers.jobs.model import Job

__all__ = ["Matched", "Mismatch", "match_events"]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A trigger whose condition raised on an event; ``error`` says why, for the result row."""

    recorded: Recorded
    trigger: Trigger
    error: str


@dataclass(slots=True)
class Matched:
    """What a batch of events started: the jobs to enqueue, the failed conditions to record,
    and how many (event, trigger) pairs matched, for the match-rate metric."""

    jobs: list[Job] = field(default_factory=list)
    failures: list[Mismatch] = field(default_factory=list)
    matches: int = 0
    events: int = 0


def match_events(
    index: TriggerIndex,
    events: Iterable[Recorded],
    *,
    partition_of: dict[str, str | None] | None = None,
    only: frozenset[str] | None = None,
) -> Matched:
    """Evaluate ``events`` against ``index``; ``only`` limits it to those trigger ids (a
    backfill through chosen triggers). Invalidated events start nothing."""
    out = Matched()
    for recorded in events:
        out.events += 1
        if recorded.invalidated:
            continue
        event = recorded.event
        partition = partition_of.get(event.id) if partition_of else None
        for trigger, answer in index.evaluate(event):
            if only is not None and trigger.id not in only:
                continue
            if isinstance(answer, Exception):
                out.failures.append(Mismatch(recorded, trigger, str(answer)))
                continue
            if answer is not True:
                continue
            out.matches += 1
            out.jobs.extend(
                Job.for_event(
                    event,
                    trigger.id,
                    i,
                    action,
                    position=recorded.position,
                    partition=partition,
                )
                for i, action in enumerate(trigger.actions)
            )
    return out
