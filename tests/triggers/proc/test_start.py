"""Where a processor that never ran starts (``processor.start``), on real SQLite and PostgreSQL.

``end`` (the default) runs none of the store's history and the next event; ``beginning`` runs
all of it; a restart keeps its position; a new partition count re-reads from the group's
recorded start, skipping nothing and enqueueing nothing twice; two processes starting at once
keep one start.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.triggers.proc.conftest import running, settings_for, wait_until
from tidings.event import Event
from tidings.store import open_store
from tidings.store.chain import chain_extensions
from tidings.triggers.database import open_database
from tidings.triggers.service import TriggerService
from tidings.triggers.starts import GroupStarts

psycopg = pytest.importorskip("psycopg")

from tests.contract.test_store_postgres import db, session_db  # noqa: E402, F401

TRIGGER = {"id": "st", "pattern": "proctest.start", "actions": [{"type": "log"}]}


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return str(request.getfixturevalue("db"))


def events(n: int, chains: int = 1) -> list[Event]:
    return [
        Event(
            type="proctest.start",
            source="t",
            data={"n": i},
            extensions=chain_extensions(
                chain_id=1 + i % chains,
                block_number=1000 + i,
                block_hash=f"0xs{i}",
                parent_hash=f"0xs{i - 1}",
            ),
        )
        for i in range(n)
    ]


async def ran_keys(service: TriggerService) -> Counter[str]:
    """The result keys recorded, counted (a key recorded twice would show 2)."""
    rows = await service.results.list(trigger_id="st", limit=10_000)
    return Counter(r.key for r in rows)


def key(event: Event) -> str:
    return f"{event.id}:st:0"


async def wait_ran(service: TriggerService, wanted: list[Event]) -> Counter[str]:
    keys = {key(e) for e in wanted}

    async def done() -> bool:
        rows = await service.results.list(trigger_id="st", status="succeeded", limit=10_000)
        return keys <= {r.key for r in rows}

    await wait_until(done, lambda: ran_keys(service), 60)
    return await ran_keys(service)


async def test_start_end_runs_no_history_then_the_next_event(url: str, tmp_path: Path) -> None:
    store: Any = open_store(url)
    try:
        history = events(5)
        store.append(history)
        head = store.head()
        settings = settings_for(tmp_path, url, [TRIGGER])  # processor.start: end by default
        assert settings.processor.start == "end"
        async with running(settings, store) as service:
            new = Event(type="proctest.start", source="t")
            store.append(new)
            seen = await wait_ran(service, [new])
            assert seen == Counter({key(new): 1}), seen
            assert service.processor.counts["events"] == 1, service.processor.counts
            assert service.processor.group_start == head
    finally:
        store.close()


async def test_start_beginning_runs_all_of_history(url: str, tmp_path: Path) -> None:
    store: Any = open_store(url)
    try:
        history = events(5)
        store.append(history)
        settings = settings_for(tmp_path, url, [TRIGGER], start="beginning")
        async with running(settings, store) as service:
            seen = await wait_ran(service, history)
            assert seen == Counter({key(e): 1 for e in history}), seen
            assert service.processor.group_start == 0
    finally:
        store.close()


async def test_a_restart_keeps_its_position(url: str, tmp_path: Path) -> None:
    store: Any = open_store(url)
    try:
        store.append(events(3))
        head = store.head()
        settings = settings_for(tmp_path, url, [TRIGGER])
        first = Event(type="proctest.start", source="t")
        async with running(settings, store) as service:
            store.append(first)
            await wait_ran(service, [first])
        second = Event(type="proctest.start", source="t")
        store.append(second)  # while no processor runs
        async with running(settings, store) as service:
            seen = await wait_ran(service, [second])
            assert seen == Counter({key(first): 1, key(second): 1}), seen
            assert service.processor.group_start == head  # recorded once, the first time
            assert service.processor.counts["new_jobs"] == 1, service.processor.counts
    finally:
        store.close()


async def test_new_partition_count_skips_nothing_and_runs_nothing_twice(
    url: str, tmp_path: Path
) -> None:
    store: Any = open_store(url)
    try:
        store.append(events(6, chains=8))  # history: never run
        one = settings_for(tmp_path, url, [TRIGGER])
        before = events(12, chains=8)
        async with running(one, store) as service:
            store.append(before)
            await wait_ran(service, before)
            assert service.processor.counts["new_jobs"] == len(before)
        after = events(12, chains=8)
        store.append(after)  # while stopped: the new partitions must not skip these
        four = settings_for(tmp_path, url, [TRIGGER], partitions=4)
        async with running(four, store) as service:
            seen = await wait_ran(service, before + after)
            assert seen == Counter({key(e): 1 for e in before + after}), seen
            # the 4 partitions re-read from the group's start: the old events' keys dedupe
            counts = service.processor.counts
            assert counts["new_jobs"] == len(after), counts
            assert counts["jobs"] == len(before) + len(after), counts
        attempts = {r.key: r.attempts for r in await _all(url)}
        assert set(attempts.values()) == {1}, attempts
    finally:
        store.close()


async def _all(url: str) -> list[Any]:
    from tidings.triggers.results import ActionResults  # noqa: PLC0415

    results = ActionResults(url)
    try:
        return await results.list(trigger_id="st", limit=10_000)
    finally:
        await results.close()


def test_two_processes_starting_at_once_record_one_start(url: str) -> None:
    """Eight connections record different starts for one group at the same moment: one wins,
    every caller gets that one."""
    databases = [open_database(url) for _ in range(8)]
    barrier = threading.Barrier(len(databases))
    got: list[int] = []
    errors: list[BaseException] = []

    def record(i: int) -> None:
        try:
            starts = GroupStarts(databases[i])
            barrier.wait(10)
            got.append(starts.record("proctest-race", 100 + i))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(len(databases))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(got) == len(databases) and len(set(got)) == 1, got
        assert 100 <= got[0] < 100 + len(databases)
        assert GroupStarts(databases[0]).get("proctest-race") == got[0]
        assert GroupStarts(databases[0]).get("proctest-other") is None
    finally:
        for d in databases:
            d.close()


def test_a_bad_start_is_refused_naming_the_argument(tmp_path: Path) -> None:
    from tidings.triggers.index import TriggerIndex  # noqa: PLC0415
    from tidings.triggers.processor import Processor  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"Processor\(start=\): expected 'end' or 'beginning'"):
        Processor(None, None, None, index_source=TriggerIndex, start="now")  # type: ignore[arg-type]
