"""Two ``tidings process`` sharing 16 chains in 8 partitions by leases on PostgreSQL: each
takes its share, no action runs twice and none is missed; then one is SIGKILLed and the other
takes its partitions over from their checkpoints when the leases run out.

Each matched event starts a ``log`` action (a line per execution, in each process's own log)
and a ``publish`` action (the effect: the store refuses a second copy of its derived id).
"""

from __future__ import annotations

import signal
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.triggers.proc.conftest import (
    pg_rows,
    start_process,
    stop_process,
    wait_ready,
    wait_until,
    write_settings,
)
from tidings.event import Event
from tidings.store import Criteria, open_store
from tidings.store.chain import chain_extensions
from tidings.triggers.partitions import PartitionLeases
from tidings.triggers.processor import partition_for

psycopg = pytest.importorskip("psycopg")

from tests.contract.test_store_postgres import db, session_db  # noqa: E402, F401

CHAINS = 16
TRIGGER = {
    "id": "shared",
    "pattern": "proctest.block",
    "actions": [
        {"type": "log", "level": "warning", "message": "ran {id}"},
        {"type": "publish", "event_type": "proctest.blocked"},
    ],
}


def blocks(first: int, last: int) -> list[Event]:
    """One event per chain per block, chains 1..16, in block order."""
    return [
        Event(
            type="proctest.block",
            source="t",
            data={"chain": chain, "block": n},
            extensions=chain_extensions(
                chain_id=chain,
                block_number=n,
                block_hash=f"0x{chain}-{n}",
                parent_hash=f"0x{chain}-{n - 1}",
            ),
        )
        for n in range(first, last + 1)
        for chain in range(1, CHAINS + 1)
    ]


def ran(*logs: Path) -> Counter[str]:
    found: Counter[str] = Counter()
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if " ran " in line:
                found[line.rsplit(" ran ", 1)[1].strip()] += 1
    return found


def owners(url: str) -> dict[str, list[int]]:
    rows = pg_rows(
        url,
        "SELECT owner, array_agg(part ORDER BY part) FROM tidings_trigger_leases "
        "WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner",
    )
    return {str(owner): list(parts) for owner, parts in rows}


def test_partition_is_crc32_of_the_key_modulo_the_count() -> None:
    event = blocks(1, 1)[4]  # chain 5
    assert partition_for(event, "chain_id", 8) == zlib.crc32(b"5") % 8
    assert partition_for(event, "chain_id", 1) == 0
    assert partition_for(Event(type="x.y", source="t"), "chain_id", 8) == 0  # no key: 0
    reg = Event(type="x.y", source="t", extensions=chain_extensions(registry="identity"))
    assert partition_for(reg, "registry", 8) == zlib.crc32(b"identity") % 8
    spread = {partition_for(e, "chain_id", 8) for e in blocks(1, 1)}
    assert len(spread) >= 5, spread  # 16 chains land in most of the 8 partitions


def test_leases_share_take_over_and_release(db: str) -> None:  # noqa: F811
    a = PartitionLeases(db, "proctest", 8, member="a", ttl=1.0)
    b = PartitionLeases(db, "proctest", 8, member="b", ttl=1.0)
    try:
        assert a.beat().keep == frozenset(range(8))  # alone: everything
        first = b.beat()
        assert first.keep == frozenset() and first.members == 2  # nothing free yet
        again = a.beat()  # two live members: a gives back its surplus
        assert len(again.keep) == 4 and len(again.surplus) == 4
        a.release(again.surplus)
        assert b.beat().keep == again.surplus
        assert {o: len(p) for o, p in owners(db).items()} == {"a": 4, "b": 4}
        # a stops beating (dead): after its leases run out, b takes its partitions
        import time  # noqa: PLC0415

        time.sleep(1.3)
        assert b.beat().keep == frozenset(range(8))
        # a comes back: what it held is gone; it renews nothing and waits for free ones
        assert a.beat().keep == frozenset()
        b.leave()
        assert owners(db) == {}
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(300)
async def test_two_processes_share_chains_then_one_dies(db: str, tmp_path: Path) -> None:  # noqa: F811
    config = write_settings(tmp_path, db, [TRIGGER], partitions=8, workers=4)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    store: Any = open_store(db)
    procs = [start_process(config, logs[0]), start_process(config, logs[1])]
    try:
        await wait_ready(procs[0], logs[0], 1)
        await wait_ready(procs[1], logs[1], 1)
        await wait_until(
            lambda: sorted(len(p) for p in owners(db).values()) == [4, 4], lambda: owners(db), 60
        )
        first = blocks(1, 40)  # 640 events
        store.append(first)

        def results() -> int:
            return int(pg_rows(db, "SELECT count(*) FROM action_results")[0][0])

        await wait_until(lambda: results() == 2 * len(first), results, 60)
        seen = ran(*logs)
        assert set(seen) == {e.id for e in first}
        assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1][:5]
        # both processes ran actions (the workers share the queue), none the same job
        by_log = [set(ran(log)) for log in logs]
        assert by_log[0] and by_log[1] and not by_log[0] & by_log[1]
        # each job carries the partition of its event's chain
        rows = pg_rows(db, "SELECT event_id, partition_key FROM action_jobs")
        want = {e.id: str(partition_for(e, "chain_id", 8)) for e in first}
        assert dict(rows) == want

        # one dies mid-stream; the other takes its partitions over when the leases run out
        second = blocks(41, 100)  # 960 events
        store.append(second[:300])
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        store.append(second[300:])
        everything = first + second

        def published() -> int:
            return len(store.load(Criteria(types=("proctest.blocked",))))

        await wait_until(
            lambda: results() == 2 * len(everything) and published() == len(everything),
            lambda: {"results": results(), "published": published(), "owners": owners(db)},
            120,
        )
        seen = ran(*logs)
        assert set(seen) == {e.id for e in everything}  # none missed
        twice = sum(n - 1 for n in seen.values())
        assert twice <= 4 * 2, twice  # only what the dead one had in flight
        causes = Counter(
            r.event.causation_id for r in store.load(Criteria(types=("proctest.blocked",)))
        )
        assert max(causes.values()) == 1 and len(causes) == len(everything)
        survivor = owners(db)
        assert [len(p) for p in survivor.values()] == [8], survivor
        states = dict(pg_rows(db, "SELECT state, count(*) FROM action_jobs GROUP BY state"))
        assert states == {"done": 2 * len(everything)}, states
    finally:
        for proc in procs:
            stop_process(proc)
        store.close()
