"""Scaling out: processors of one group share the partitions of the event stream by leases.

An event's partition is ``crc32(partition key) % partitions`` (``processor.partition_by``:
the chain id or the registry; ``tidings.triggers.processor.partition_for``). On PostgreSQL each
partition is leased to one member of the group at a time (``tidings_trigger_leases``), and
every member writes a heartbeat row (``tidings_trigger_members``). On each ``beat`` a member:

1. renews its heartbeat and every lease it still holds (a lease that ran out but that nobody
   took over is still its own);
2. counts the live members and works out its fair share, ``ceil(partitions / members)``;
3. gives back what it holds beyond that share (``surplus``; the caller stops those partitions
   first, so their checkpoints are saved, then ``release``\\s them), or takes free partitions
   up to it: never leased, released, or whose owner stopped renewing (it died).

A partition taken over resumes from its own checkpoint in the store, so none is skipped; an
event the dead member had enqueued but not yet checkpointed is handed over again, and its job
keys make the second enqueue a no-op. On SQLite (one process) one processor owns every
partition and no leases are kept.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from tidings.event import new_id
from tidings.triggers.database import Database, open_database

__all__ = ["Beat", "PartitionLeases"]

log = logging.getLogger("tidings.triggers.partitions")


@dataclass(frozen=True, slots=True)
class Beat:
    """What one heartbeat found: the partitions to run, and those to stop then release."""

    keep: frozenset[int]
    surplus: frozenset[int] = field(default_factory=frozenset)
    members: int = 1


class PartitionLeases:
    """One member's leases in the group ``group`` of ``partitions`` partitions, in the
    PostgreSQL database at ``url`` (the store's). ``ttl``: seconds a lease and a heartbeat
    live without renewal; beat every ``ttl / 3``."""

    def __init__(
        self,
        url: str,
        group: str,
        partitions: int,
        *,
        member: str | None = None,
        ttl: float = 10.0,
        database: Database | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"PartitionLeases(ttl=): expected seconds > 0, got {ttl!r}")
        self._db = database if database is not None else open_database(url, pool_size=1)
        self._own_db = database is None
        if self._db.dialect != "postgres":
            raise ValueError(
                "partition leases need PostgreSQL (several processes); on SQLite one processor "
                "owns every partition"
            )
        self._q = self._db.queries("partitions")
        self.group = f"{group}/{partitions}"
        self.partitions = partitions
        self.member = member or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self.ttl = float(ttl)
        self.held: frozenset[int] = frozenset()

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"group": self.group, "member": self.member, "ttl": self.ttl, **extra}

    def beat(self) -> Beat:
        """Heartbeat, renew, and take or give back partitions (see the module docstring)."""
        q = self._q
        with self._db.transaction() as conn:
            conn.execute(q.heartbeat, self._params())
            conn.execute(q.prune, self._params())
            members = max(1, int(conn.execute(q.live, self._params()).fetchone()[0]))
            held = {int(r[0]) for r in conn.execute(q.renew, self._params()).fetchall()}
        share = math.ceil(self.partitions / members)
        if len(held) > share:
            ordered = sorted(held)
            keep, surplus = set(ordered[:share]), set(ordered[share:])
        else:
            keep, surplus = set(held), set()
            want = share - len(held)
            if want > 0:
                with self._db.connection() as conn:
                    free = [int(r[0]) for r in conn.execute(q.free, self._params(
                        partitions=self.partitions)).fetchall()]  # fmt: skip
                for part in free:
                    if want <= 0:
                        break
                    if part in held:
                        continue
                    with self._db.transaction() as conn:
                        got = conn.execute(q.acquire, self._params(part=part)).fetchone()
                    if got is not None:
                        keep.add(part)
                        want -= 1
        if frozenset(keep) != self.held:
            log.info("processor %s in group %s (%d members): partitions %s", self.member,
                     self.group, members, sorted(keep))  # fmt: skip
        self.held = frozenset(keep | surplus)
        return Beat(frozenset(keep), frozenset(surplus), members)

    def release(self, parts: frozenset[int] | set[int]) -> None:
        """Give ``parts`` back (stop running them first: their checkpoints are saved)."""
        if not parts:
            return
        with self._db.transaction() as conn:
            conn.execute(self._q.release, self._params(parts=sorted(parts)))
        self.held = self.held - frozenset(parts)

    def leave(self) -> None:
        """Release every lease and the member row (a clean stop: others take over at once)."""
        self.release(self.held)
        with self._db.transaction() as conn:
            conn.execute(self._q.leave, self._params())

    def leases(self) -> list[tuple[int, str | None, bool]]:
        """(partition, owner, live) of every lease row of the group, for health and tests."""
        with self._db.connection() as conn:
            rows = conn.execute(self._q.leases, self._params()).fetchall()
        return [(int(r[0]), r[1], bool(r[2])) for r in rows]

    def close(self) -> None:
        if self._own_db:
            self._db.close()
