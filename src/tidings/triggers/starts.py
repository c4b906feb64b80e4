"""Where a processor group starts: recorded once, the first time the group ever runs.

A group is the processor's name. Its start (the store's head for ``processor.start: end``,
0 for ``beginning``) lives in ``tidings_trigger_starts`` (migration ``005_starts.sql``),
written with INSERT .. ON CONFLICT DO NOTHING so two processes starting at once keep one.
A partition whose store checkpoint was never moved starts from it (``Processor``), so a new
partition count (new checkpoint names) re-reads from the group's start: the job keys dedupe
what an old partition already handled, and nothing after the start is skipped.
"""

from __future__ import annotations

import time
from typing import Literal

from tidings.triggers.database import Database

__all__ = ["START_CHOICES", "GroupStarts", "Start"]

Start = Literal["end", "beginning"]
START_CHOICES: tuple[Start, ...] = ("end", "beginning")


class GroupStarts:
    """The ``tidings_trigger_starts`` table of one triggers database (not owned: not closed)."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._q = database.queries("starts")

    def record(self, group: str, position: int) -> int:
        """Record ``position`` as ``group``'s start unless it has one; return the one kept."""
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ValueError(f"GroupStarts.record: position must be an int >= 0, got {position!r}")
        params = {"group_name": group, "position": position, "now": time.time()}
        with self._db.transaction() as conn:
            conn.execute(self._q.record_start, params)
            row = conn.execute(self._q.start, params).fetchone()
        return int(row[0])

    def get(self, group: str) -> int | None:
        """``group``'s recorded start, or None when it never ran."""
        with self._db.connection() as conn:
            row = conn.execute(self._q.start, {"group_name": group}).fetchone()
        return None if row is None else int(row[0])
