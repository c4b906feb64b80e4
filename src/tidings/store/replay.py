"""Replay stored events into a handler or a bus, page by page, reporting progress.

Replay is how a new projection is backfilled, a webhook endpoint re-fed, or a bus re-published
after an outage: it reads a position range (and optional criteria) in global order and hands
each event over. It keeps no checkpoint of its own; use a named subscription for that.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from tidings.store.base import Criteria, EventStore, Recorded, check_criteria

__all__ = ["Progress", "replay"]

Progress = Callable[[int, int], Any]


def _target_of(target: Any) -> Callable[[Any], Any]:
    if hasattr(target, "publish") and callable(target.publish):
        return target.publish  # type: ignore[no-any-return]
    if callable(target):
        return target  # type: ignore[no-any-return]
    raise TypeError(
        f"replay(target): expected a callable or an object with .publish(event) (a Bus), "
        f"got {type(target).__name__}"
    )


def _count(store: EventStore, criteria: Criteria, to_position: int | None) -> int:
    """How many events the replay will hand over (a backend ``count`` if it has one)."""
    counter = getattr(store, "count", None)
    if to_position is None and callable(counter):
        return int(counter(dataclasses.replace(criteria, limit=None)))
    total, after = 0, criteria.after_position
    while page := store.load(dataclasses.replace(criteria, after_position=after, limit=5000)):
        for rec in page:
            if to_position is not None and rec.position > to_position:
                return total
            total += 1
        after = page[-1].position
    return total


def replay(
    store: EventStore,
    target: Callable[[Any], Any] | Any,
    criteria: Criteria | None = None,
    *,
    after_position: int | None = None,
    to_position: int | None = None,
    progress: Progress | None = None,
    page_size: int = 1000,
    records: bool = False,
) -> int:
    """Hand every matching event after ``after_position`` up to ``to_position`` (inclusive) to
    ``target`` in global order; return how many.

    ``target`` is a callable taking the Event (the Recorded with ``records=True``) or anything
    with ``.publish(event)``, such as a Bus. ``progress(done, total)`` is called after each page
    and once at the end. A target that raises stops the replay with that error; the count of
    events already handed over is in the progress calls, and ``after_position=`` resumes.
    """
    criteria = criteria or Criteria()
    check_criteria(criteria, "replay(criteria)")
    if page_size < 1:
        raise ValueError(f"replay(page_size): expected >= 1, got {page_size}")
    if after_position is not None:
        criteria = dataclasses.replace(
            criteria, after_position=max(after_position, criteria.after_position)
        )
    limit = criteria.limit
    criteria = dataclasses.replace(criteria, limit=None)
    send = _target_of(target)
    total = _count(store, criteria, to_position) if progress is not None else 0
    if limit is not None:
        total = min(total, limit)
    done, after = 0, criteria.after_position
    while limit is None or done < limit:
        size = page_size if limit is None else min(page_size, limit - done)
        page: list[Recorded] = store.load(
            dataclasses.replace(criteria, after_position=after, limit=size)
        )
        if not page:
            break
        finished = False
        for rec in page:
            if to_position is not None and rec.position > to_position:
                finished = True
                break
            result = send(rec if records else rec.event)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError(
                    "replay(target) returned an awaitable; pass a sync callable "
                    "(bus.publish, not bus.apublish)"
                )
            done += 1
        after = page[-1].position
        if progress is not None:
            progress(done, total)
        if finished:
            break
    if progress is not None and (done == 0 or total != done):
        progress(done, max(total, done))
    return done
