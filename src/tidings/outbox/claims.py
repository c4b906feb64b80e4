"""What a relay needs from the outbox table, whatever the database: claim, finish, release, wait.

``tidings.outbox.postgres`` and ``tidings.outbox.sqlite`` implement ``Claims``; the relay runs
the same cycle over either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from tidings.event import Event, EventError, decode

__all__ = ["Batch", "Claims", "decode_rows"]

log = logging.getLogger("tidings.outbox")


@dataclass(slots=True)
class Batch:
    """Claimed rows: ``ids`` (all of them, to finish) and their ``events`` in publish order."""

    ids: list[int]
    events: list[Event] = field(default_factory=list)
    token: object = None  # whatever the backend needs to finish or release this claim


class Claims(Protocol):
    """One relay's access to the outbox table (one connection, one claim at a time)."""

    where: str  # host:port/db or the file, for logs (never a password)

    def claim(self, limit: int) -> Batch | None:
        """Take up to ``limit`` publishable rows, oldest first; None when there are none."""
        ...

    def finish(self, batch: Batch, mark: bool) -> None:
        """The batch was published: delete its rows (or mark them published)."""
        ...

    def release(self, batch: Batch) -> None:
        """The batch was not published: hand its rows back, unchanged."""
        ...

    def wait(self, timeout: float) -> bool:
        """Block until a commit may have added rows (True) or ``timeout`` passes (False)."""
        ...

    def wake(self) -> None:
        """End a ``wait`` early (stopping)."""
        ...

    def pending(self) -> tuple[int, float]:
        """Rows not yet published, and the age in seconds of the oldest (0.0 when none)."""
        ...

    def purge(self, retention: float, limit: int) -> int:
        """Delete up to ``limit`` marked rows published more than ``retention`` seconds ago."""
        ...

    def close(self) -> None: ...


def decode_rows(rows: list[tuple[int, str]]) -> Batch:
    """Decode claimed ``(id, payload)`` rows in id order.

    A payload that is not an event (written around the outbox writer by hand) cannot ever be
    published: it is logged with its row id and finished with the batch, not retried forever.
    """
    rows.sort(key=lambda r: r[0])
    batch = Batch(ids=[r[0] for r in rows])
    for row_id, payload in rows:
        try:
            batch.events.append(decode(payload))
        except EventError as exc:
            log.error(
                "outbox row %d is not a valid event and is dropped: %s; payload starts %r",
                row_id,
                exc,
                payload[:200],
            )
    return batch
