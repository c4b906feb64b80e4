"""Replay and backfill: stored events, read again in position order, through the triggers.

``backfill`` pages through the store (``Criteria``: since/until, a starting position, types),
evaluates each page with ``match_events`` (the processor's own step, so jobs are keyed the
same way: ``event:trigger:index``) and enqueues the jobs. The queue ignores a key it has seen,
whatever became of that job, so running a replay or a backfill twice, or over events the
processor already handled, enqueues nothing new: ``Backfill.duplicates`` counts what was
offered again and ignored. Invalidated events (a reorg) start nothing.

``tidings triggers replay`` runs every enabled trigger (or ``--trigger`` ones);
``tidings triggers backfill`` runs chosen triggers only. A condition that raises on an event is
counted in ``condition_errors`` (with the first few errors), the other triggers go on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import Any

from tidings.store.base import Criteria
from tidings.triggers.index import TriggerIndex
from tidings.triggers.jobs.model import JobQueue
from tidings.triggers.matching import match_events

__all__ = ["Backfill", "backfill", "check_triggers"]

MAX_ERRORS_SHOWN = 5


@dataclasses.dataclass(slots=True)
class Backfill:
    """What a run did: events read, (event, trigger) pairs matched, jobs enqueued new, jobs
    offered again and ignored (their key was seen before), conditions that raised."""

    events: int = 0
    matched: int = 0
    enqueued: int = 0
    duplicates: int = 0
    condition_errors: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    last_position: int = 0


def check_triggers(index: TriggerIndex, trigger_ids: Collection[str]) -> frozenset[str]:
    """The chosen ids, or a ValueError naming an unknown or disabled one and what exists."""
    chosen = frozenset(trigger_ids)
    for trigger_id in sorted(chosen):
        trigger = index.get(trigger_id)
        if trigger is None:
            known = ", ".join(sorted(t.id for t in index)) or "none"
            raise ValueError(f"--trigger {trigger_id!r}: no such trigger (known: {known})")
        if not trigger.enabled:
            raise ValueError(
                f"--trigger {trigger_id!r} is disabled: it would match nothing; enable it "
                f"first (POST /triggers/{trigger_id}/enable, or enabled: true in the file)"
            )
    return chosen


async def backfill(
    store: Any,
    index: TriggerIndex,
    queue: JobQueue,
    criteria: Criteria,
    *,
    only: Collection[str] | None = None,
    until_position: int | None = None,
    batch: int = 500,
    progress: Callable[[Backfill], None] | None = None,
) -> Backfill:
    """Run the events of ``criteria`` (from ``criteria.after_position``, up to
    ``until_position`` inclusive) through ``index`` (``only`` those trigger ids) into
    ``queue``; ``progress`` is called after every page."""
    if batch < 1:
        raise ValueError(f"backfill(batch=): expected >= 1, got {batch}")
    chosen = None if only is None else frozenset(only)
    report = Backfill(last_position=criteria.after_position)
    after = criteria.after_position
    while True:
        loaded = await store.aload(dataclasses.replace(criteria, after_position=after, limit=batch))
        page = loaded
        if until_position is not None:
            page = [r for r in loaded if r.position <= until_position]
        if page:
            matched = match_events(index, page, only=chosen)
            report.events += len(page)
            report.matched += matched.matches
            if matched.jobs:
                new = await queue.enqueue(matched.jobs)
                report.enqueued += new
                report.duplicates += len(matched.jobs) - new
            for failure in matched.failures:
                report.condition_errors += 1
                if len(report.errors) < MAX_ERRORS_SHOWN:
                    report.errors.append(
                        f"event {failure.recorded.event.id} (position "
                        f"{failure.recorded.position}), trigger {failure.trigger.id!r}: "
                        f"{failure.error}"
                    )
            after = report.last_position = page[-1].position
            if progress is not None:
                progress(report)
        if len(page) < len(loaded) or len(loaded) < batch:
            break
    return report
