"""Chain checkpoints and reorgs: a fork of depth 3 replayed through a processor's steps
(observe, recover, enqueue, advance) against real PostgreSQL and SQLite (and the memory store):
invalidation counted in the table, pending jobs cancelled, executed results invalidated,
compensation enqueued, the chain.reorg event, and resumption on the new branch.

The job queue and the results here follow the triggers contract (JOBS' JobQueue and
ActionResults: idempotent enqueue by key, cancel_for_events for pending jobs only,
invalidate_for_events for succeeded results); they are small in-memory stand-ins until JOBS'
implementations are on this branch. Event types live under ``chaintest.``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tidings.event import Event
from tidings.store import Criteria, Recorded, open_store
from tidings.store.chain import chain_extensions
from tidings.triggers.chains import REORG_TYPE, ChainTracker, Reorg, ReorgReport
from tidings.triggers.checkpoints import open_checkpoints

psycopg = pytest.importorskip("psycopg")

from tests.contract.test_store_postgres import _sql, db, session_db  # noqa: E402, F401

CHAIN = 7


# --------------------------------------------------------------------- contract stand-ins


@dataclass
class ContractQueue:
    """JobQueue as the contract states it: a key seen once is never enqueued again."""

    jobs: dict[str, Any] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)

    async def enqueue(self, jobs: Sequence[Any]) -> int:
        new = 0
        for job in jobs:
            if job.key not in self.jobs:
                self.jobs[job.key] = job
                self.status[job.key] = "queued"
                new += 1
        return new

    async def cancel_for_events(self, event_ids: Sequence[str]) -> int:
        wanted = set(event_ids)
        n = 0
        for key, job in self.jobs.items():
            if job.event_id in wanted and self.status[key] == "queued":
                self.status[key] = "cancelled"
                n += 1
        return n

    def run_all(self, results: ContractResults) -> int:
        """A worker: every queued job succeeds."""
        n = 0
        for key, state in list(self.status.items()):
            if state == "queued":
                self.status[key] = "done"
                results.status[key] = "succeeded"
                n += 1
        return n


@dataclass
class ContractResults:
    status: dict[str, str] = field(default_factory=dict)

    def invalidate_for_events(self, event_ids: Sequence[str]) -> list[str]:
        prefixes = tuple(f"{e}:" for e in event_ids)
        keys = [k for k, s in self.status.items() if s == "succeeded" and k.startswith(prefixes)]
        for k in keys:
            self.status[k] = "invalidated"
        return keys


@dataclass(frozen=True)
class Spec:
    type: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trig:
    id: str
    pattern: str
    compensation: Spec | None = None


class Index:
    def __init__(self, *triggers: Trig) -> None:
        self.triggers = triggers

    def match(self, event_type: str) -> list[Trig]:
        return [t for t in self.triggers if t.pattern == event_type]


@dataclass(frozen=True)
class Job:
    key: str
    event_id: str
    trigger_id: str
    action_index: int
    action: Any
    event: Event
    partition: str | None = None
    compensation: bool = False
    attempts: int = 0
    position: int | None = None


# --------------------------------------------------------------------- the processor's steps


class MiniProcessor:
    """What PROC's processor does per event: observe → recover → enqueue → advance."""

    def __init__(self, store: Any, tracker: ChainTracker, index: Index) -> None:
        self.store, self.tracker, self.index = store, tracker, index
        self.queue, self.results = ContractQueue(), ContractResults()
        self.after = 0
        self.reports: list[ReorgReport] = []
        self.published: list[Event] = []

    def publish(self, event: Event) -> None:
        self.published.append(event)
        self.store.append(event)

    async def run(self) -> None:
        while page := self.store.read_all(self.after, 100):
            for rec in page:
                await self.handle(rec)
                self.after = rec.position

    async def handle(self, rec: Recorded) -> None:
        reorg = self.tracker.observe(rec)
        if reorg is not None:
            report = await self.tracker.recover(
                reorg,
                queue=self.queue,
                results=self.results,
                triggers=self.index,
                publish=self.publish,
            )
            self.reports.append(report)
        jobs = [
            Job(f"{rec.event.id}:{t.id}:0", rec.event.id, t.id, 0, None, rec.event)
            for t in self.index.match(rec.event.type)
        ]
        await self.queue.enqueue(jobs)
        self.tracker.advance_to(rec)


def block_events(branch: str, number: int, parent: str | None, logs: int = 2) -> list[Event]:
    return [
        Event(
            type="chaintest.transfer",
            source="tests/chains",
            id=f"{branch}{number}-{i}-{uuid.uuid4().hex[:6]}",
            data={"block": number, "log": i},
            extensions=chain_extensions(
                chain_id=CHAIN,
                block_number=number,
                block_hash=f"0x{branch}{number}",
                parent_hash=parent,
                log_index=i,
            ),
        )
        for i in range(logs)
    ]


def branch(name: str, first: int, last: int, parent_of_first: str) -> list[Event]:
    out: list[Event] = []
    parent = parent_of_first
    for n in range(first, last + 1):
        out += block_events(name, n, parent)
        parent = f"0x{name}{n}"
    return out


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield f"memory://chains-{uuid.uuid4().hex}"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/chains.db"
    else:
        yield request.getfixturevalue("db")


def invalidated_rows(url: str, store: Any) -> int:
    """Rows marked invalidated, counted in the table itself (the store's view for memory)."""
    if url.startswith("postgresql"):
        return int(_sql(url, "SELECT count(*) FROM events WHERE invalidated")[0][0])
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return int(
                conn.execute("SELECT count(*) FROM tidings_events WHERE invalidated").fetchone()[0]
            )
    return sum(1 for r in store.read_all(0, 10_000, include_invalidated=True) if r.invalidated)


# --------------------------------------------------------------------- the fork of depth 3


def test_a_fork_of_depth_3_is_invalidated_cancelled_compensated_and_resumed(
    store_url: str,
) -> None:
    store: Any = open_store(store_url)
    tracker = ChainTracker(store)
    index = Index(Trig("notify", "chaintest.transfer", compensation=Spec("log")))
    proc = MiniProcessor(store, tracker, index)
    try:
        # branch a: blocks 1..6, two logs each; every job of blocks 1..4 has run
        old = branch("a", 1, 6, "0xa0")
        store.append(old[:8])
        asyncio.run(proc.run())
        assert proc.queue.run_all(proc.results) == 8
        store.append(old[8:])
        asyncio.run(proc.run())
        assert tracker.checkpoint(CHAIN) is not None
        assert (tracker.checkpoint(CHAIN).block_number, tracker.checkpoint(CHAIN).block_hash) == (  # type: ignore[union-attr]
            6,
            "0xa6",
        )
        assert proc.reports == []

        # the chain reorganises: blocks 4, 5, 6 are replaced by b4..b7, b4's parent is a3
        new = branch("b", 4, 7, "0xa3")
        store.append(new)
        asyncio.run(proc.run())

        assert len(proc.reports) == 1, [r.reorg for r in proc.reports]
        report = proc.reports[0]
        reorg = report.reorg
        assert (reorg.chain_id, reorg.last_valid_block, reorg.depth) == (CHAIN, 3, 3)
        assert reorg.invalidated_blocks == ((4, "0xa4"), (5, "0xa5"), (6, "0xa6"))
        assert reorg.new_head == (4, "0xb4")
        replaced = [e.id for e in old[6:]]  # blocks 4, 5, 6: six events
        assert list(report.invalidated_events) == replaced
        assert invalidated_rows(store_url, store) == 6
        # pending jobs of blocks 5 and 6 cancelled; the executed ones of block 4 invalidated
        assert report.cancelled_jobs == 4
        cancelled = sorted(k for k, s in proc.queue.status.items() if s == "cancelled")
        assert cancelled == sorted(f"{i}:notify:0" for i in replaced[2:])
        assert sorted(report.invalidated_results) == sorted(f"{i}:notify:0" for i in replaced[:2])
        assert all(proc.results.status[k] == "invalidated" for k in report.invalidated_results)
        # compensation enqueued for each invalidated result, with the trigger's action
        assert report.compensations == 2
        comp = [j for j in proc.queue.jobs.values() if j.compensation]
        assert sorted(j.key for j in comp) == sorted(
            f"{i}:notify:0:compensate" for i in replaced[:2]
        )
        assert all(j.action == Spec("log") and j.trigger_id == "notify" for j in comp)
        # the chain.reorg event names the chain, depth, replaced blocks and new head
        (note,) = proc.published
        assert note.type == REORG_TYPE
        assert note.data["chain_id"] == CHAIN and note.data["depth"] == 3
        assert note.data["last_valid_block"] == 3
        assert note.data["invalidated_blocks"] == [
            {"number": 4, "hash": "0xa4"},
            {"number": 5, "hash": "0xa5"},
            {"number": 6, "hash": "0xa6"},
        ]
        assert note.data["new_head"] == {"number": 4, "hash": "0xb4"}
        assert report.event is note

        # resumption on the new branch: its jobs enqueued, the checkpoint at its head
        new_jobs = [k for k, j in proc.queue.jobs.items() if j.event_id in {e.id for e in new}]
        assert len(new_jobs) == len(new) == 8
        cp = tracker.checkpoint(CHAIN)
        assert cp is not None and (cp.block_number, cp.block_hash) == (7, "0xb7")
        stored = open_checkpoints(store) if not store_url.startswith("memory") else None
        if stored is not None:  # the table itself, as another process reads it
            row = stored.get(CHAIN)
            stored.close()
            assert row is not None and (row.block_number, row.block_hash) == (7, "0xb7")

        # what a reader sees: branch a up to block 3, branch b, and the reorg event
        visible = [r.event.id for r in store.load(Criteria(types=("chaintest.transfer",)))]
        assert visible == [e.id for e in old[:6]] + [e.id for e in new]
        everything = store.load(Criteria(types=("chaintest.transfer",), include_invalidated=True))
        assert [r.event.id for r in everything if r.invalidated] == replaced
        assert [r.event.type for r in store.load(Criteria(types=(REORG_TYPE,)))] == [REORG_TYPE]

        # recovery is idempotent: run again, nothing new
        again = asyncio.run(
            tracker.recover(reorg, queue=proc.queue, results=proc.results, triggers=index)
        )
        assert (again.invalidated_events, again.cancelled_jobs, again.compensations) == ((), 0, 0)
    finally:
        tracker.close()
        store.close()


def test_a_parent_hash_mismatch_on_the_next_block_is_a_reorg_of_depth_1(store_url: str) -> None:
    store: Any = open_store(store_url)
    tracker = ChainTracker(store)
    proc = MiniProcessor(store, tracker, Index())
    try:
        store.append(branch("a", 1, 3, "0xa0"))
        asyncio.run(proc.run())
        # block 4 says its parent is x3: our block 3 (a3) was replaced, block 2 still holds
        store.append(block_events("c", 4, "0xx3"))
        asyncio.run(proc.run())
        (report,) = proc.reports
        assert (report.reorg.last_valid_block, report.reorg.depth) == (2, 1)
        assert report.reorg.invalidated_blocks == ((3, "0xa3"),)
        assert len(report.invalidated_events) == 2 and invalidated_rows(store_url, store) == 2
        cp = tracker.checkpoint(CHAIN)
        assert cp is not None and (cp.block_number, cp.block_hash) == (4, "0xc4")
    finally:
        tracker.close()
        store.close()


def test_more_logs_of_a_block_and_redeliveries_are_not_reorgs(store_url: str) -> None:
    store: Any = open_store(store_url)
    tracker = ChainTracker(store)
    proc = MiniProcessor(store, tracker, Index())
    try:
        events = branch("a", 1, 4, "0xa0")
        store.append(events)
        asyncio.run(proc.run())
        for rec in store.read_all(0, 100):  # processed again after a restart
            assert tracker.observe(rec) is None
            tracker.advance_to(rec)
        cp = tracker.checkpoint(CHAIN)
        assert cp is not None and cp.block_number == 4  # never moved back
        # a gap (blocks 5..9 had no events) cannot be compared: no reorg
        store.append(block_events("a", 10, "0xa9"))
        asyncio.run(proc.run())
        # events without chain coordinates pass through
        store.append(Event(type="chaintest.other"))
        asyncio.run(proc.run())
        assert proc.reports == []
        assert tracker.verify(CHAIN) is None
    finally:
        tracker.close()
        store.close()


def test_verify_finds_a_checkpoint_whose_block_no_longer_holds(db: str) -> None:  # noqa: F811
    """Another writer (an indexer handling the reorg itself) invalidated the checkpointed
    block's events: the checkpoint's hash matches no valid event at its height."""
    store: Any = open_store(db)
    tracker = ChainTracker(store)
    proc = MiniProcessor(store, tracker, Index())
    try:
        store.append(branch("a", 1, 3, "0xa0"))
        asyncio.run(proc.run())
        assert tracker.verify(CHAIN) is None
        mark = f"UPDATE events SET invalidated = true WHERE chain_id = {CHAIN} AND block_number > 2"
        _sql(db, mark)
        reorg = tracker.verify(CHAIN)
        assert isinstance(reorg, Reorg)
        assert (reorg.last_valid_block, reorg.depth, reorg.invalidated_blocks) == (2, 1, ())
    finally:
        tracker.close()
        store.close()


def test_plain_sql_indexer_fork_on_postgresql(db: str) -> None:  # noqa: F811
    """Seed 001's indexer writes both branches with plain INSERTs (parent_hash column too):
    the new branch is already stored behind the old one when the processor reaches it, and
    only the old branch's events are invalidated."""
    insert = (
        "INSERT INTO events (id, chain_id, block_number, block_hash, parent_hash, "
        "transaction_hash, log_index, event_type, registry, timestamp, created_at) "
        "VALUES ('{id}', {chain}, {n}, '0x{b}{n}', '0x{p}', '0xt{n}', 0, 'AgentRegistered', "
        "'identity', EXTRACT(EPOCH FROM NOW())::BIGINT, NOW())"
    )
    for n in range(1, 6):
        _sql(db, insert.format(id=f"a{n}", chain=CHAIN, n=n, b="a", p=f"a{n - 1}"))
    for n in range(3, 7):
        parent = "a2" if n == 3 else f"b{n - 1}"
        _sql(db, insert.format(id=f"b{n}", chain=CHAIN, n=n, b="b", p=parent))
    store: Any = open_store(db)
    tracker = ChainTracker(store)
    proc = MiniProcessor(store, tracker, Index(Trig("t", "AgentRegistered", Spec("log"))))
    try:
        asyncio.run(proc.run())
        (report,) = proc.reports
        assert (report.reorg.last_valid_block, report.reorg.depth) == (2, 3)
        assert list(report.invalidated_events) == ["a3", "a4", "a5"]
        rows = _sql(db, "SELECT id FROM events WHERE invalidated ORDER BY position")
        assert rows == [("a3",), ("a4",), ("a5",)]
        assert report.cancelled_jobs == 3  # nothing ran yet: every a3..a5 job was pending
        cp = tracker.checkpoint(CHAIN)
        assert cp is not None and (cp.block_number, cp.block_hash) == (6, "0xb6")
    finally:
        tracker.close()
        store.close()
