"""Seed 001's flow end to end, and bad input, through the real TriggerService.

A plain SQL ``INSERT INTO events`` (the seed's own statement) -> the processor's live
subscription (LISTEN) -> the trigger matched -> the actions run by the workers -> the results
recorded in ``action_results``; with the job queue in the store's database and in Redis (as the
seed has it). Bad input: refused at load naming the path, or recorded at run time while the
event's other triggers go on.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.test_store_chain import SEED_INSERT
from tests.triggers.proc.conftest import (
    pg_rows,
    redis_queue,
    running,
    settings_for,
    start_process,
    stop_process,
    wait_ready,
    wait_until,
    write_settings,
)
from tidings.cli import app
from tidings.event import Event
from tidings.store import Criteria, open_store
from tidings.triggers.definitions import TriggerError
from tidings.triggers.processor import CONDITION_FAILED
from tidings.triggers.service import TriggerService

psycopg = pytest.importorskip("psycopg")

from tests.contract.test_store_postgres import db, session_db  # noqa: E402, F401

SEED_TRIGGER = {
    "id": "agent-registered",
    "pattern": "AgentRegistered",
    "condition": 'registry == "identity" and chain_id == 11155111',
    "actions": [
        {"type": "log", "message": "agent {id} on chain {extensions.chainid}"},
        {"type": "publish", "event_type": "proctest.agent.seen", "data": {"agent": "{id}"}},
    ],
}
OTHER_REGISTRY = {
    "id": "reputation-only",
    "pattern": "AgentRegistered",
    "condition": 'registry == "reputation"',
    "actions": [{"type": "log"}],
}


@pytest.mark.parametrize("queue", ["store", "redis"])
async def test_seed_001_insert_is_matched_run_and_recorded(
    db: str,  # noqa: F811
    tmp_path: Path,
    queue: str,
) -> None:
    where = "store" if queue == "store" else redis_queue()
    settings = settings_for(tmp_path, db, [SEED_TRIGGER, OTHER_REGISTRY], queue=where)
    store: Any = open_store(db)
    try:
        async with running(settings, store) as service:
            stamp = uuid.uuid4().hex[:8]
            pg_rows(db, SEED_INSERT.format(stamp=stamp))
            event_id = f"test_manual_{stamp}"

            async def both_done() -> bool:
                rows = await service.results.for_event(event_id)
                return [r.status for r in rows] == ["succeeded", "succeeded"]

            await wait_until(both_done, lambda: service.results.for_event(event_id), 30)
            rows = await service.results.for_event(event_id)
            assert [(r.key, r.action_type) for r in rows] == [
                (f"{event_id}:agent-registered:0", "log"),
                (f"{event_id}:agent-registered:1", "publish"),
            ]
            assert rows[0].output == {"message": f"agent {event_id} on chain 11155111"}
            published = store.load(Criteria(types=("proctest.agent.seen",)))
            assert [r.event.causation_id for r in published] == [event_id]
            assert published[0].event.data == {"agent": event_id}
            # the other registry's trigger did not match; the processor counted one match
            assert service.processor.counts["matches"] == 1
            assert service.processor.counts["failures"] == 0
            # seed 001's monitoring query over the results runs as written
            rate = pg_rows(
                db,
                "SELECT COUNT(DISTINCT event_id) FROM action_results "
                "WHERE created_at > NOW() - INTERVAL '1 hour'",
            )
            assert rate == [(1,)]
            if queue == "redis":
                await service.queue.drop()  # type: ignore[attr-defined]
    finally:
        store.close()


async def test_a_condition_that_raises_is_recorded_and_the_rest_goes_on(
    db: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    triggers = [
        {  # a string compared with a number: raises at run time for this event
            "id": "big-amount",
            "pattern": "proctest.payment",
            "condition": "data.amount > 100",
            "actions": [{"type": "log"}],
        },
        {"id": "every-payment", "pattern": "proctest.payment", "actions": [{"type": "log"}]},
    ]
    settings = settings_for(tmp_path, db, triggers)
    store: Any = open_store(db)
    try:
        async with running(settings, store) as service:
            bad = Event(type="proctest.payment", source="t", data={"amount": "lots"})
            good = Event(type="proctest.payment", source="t", data={"amount": 500})
            store.append([bad, good])

            async def settled() -> bool:
                return len(await service.results.list(limit=100)) == 4

            await wait_until(settled, lambda: service.results.list(limit=100), 30)
            by_key = {r.key: r for r in await service.results.list(limit=100)}
            failed = by_key[f"{bad.id}:big-amount:{CONDITION_FAILED}"]
            assert failed.status == "failed" and failed.action_type == CONDITION_FAILED
            assert failed.error is not None and "big-amount" in failed.error
            assert "amount" in failed.error, failed.error
            # the same event's other trigger ran; the good event ran both
            assert by_key[f"{bad.id}:every-payment:0"].status == "succeeded"
            assert by_key[f"{good.id}:big-amount:0"].status == "succeeded"
            assert by_key[f"{good.id}:every-payment:0"].status == "succeeded"
            assert service.processor.counts["failures"] == 1
            assert service.processor.health()["ok"]
            figures = await service.figures()  # what metrics and the API read
            assert figures["results"]["succeeded"] == 3 and figures["results"]["failed"] == 1
            assert figures["queue_depth"] == 0
            assert figures["processor"]["counts"]["matches"] == 3
            assert figures["processor"]["owned"] == [0]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("trigger", "path", "words"),
    [
        (
            {
                "id": "t1",
                "pattern": "proctest.x",
                "condition": "data.a >",
                "actions": [{"type": "log"}],
            },
            "triggers[1].condition",
            "position",
        ),
        (
            {"id": "t1", "pattern": "proctest.x", "actions": [{"type": "log"}, {"type": "fax"}]},
            "triggers[1].actions[1].type",
            "unknown action type 'fax'",
        ),
    ],
)
def test_bad_definitions_are_refused_at_load_naming_the_path(
    tmp_path: Path, trigger: dict[str, Any], path: str, words: str
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    ok = {"id": "t0", "pattern": "proctest.y", "actions": [{"type": "log"}]}
    settings = settings_for(tmp_path, url, [ok, trigger])
    store: Any = open_store(url)
    try:
        with pytest.raises(TriggerError) as caught:
            TriggerService.from_settings(settings, store)
        assert caught.value.path == path
        assert words in str(caught.value) or (words == "position" and caught.value.position)
    finally:
        store.close()
    # the command says the same in one line, exit 2, no traceback
    config = write_settings(tmp_path, url, [ok, trigger])
    result = CliRunner().invoke(app, ["--config", str(config), "process"])
    assert result.exit_code == 2, result.output
    assert path in result.output
    assert "Traceback" not in result.output


def test_process_without_triggers_says_what_to_add(tmp_path: Path) -> None:
    config = write_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", [])
    result = CliRunner().invoke(app, ["--config", str(config), "process"])
    assert result.exit_code == 2
    assert "no triggers configured or saved" in result.output


async def test_serve_runs_the_triggers_when_configured(tmp_path: Path) -> None:
    from tidings.server.service import Service  # noqa: PLC0415

    url = f"sqlite:///{tmp_path / 'events.db'}"
    trigger = {"id": "served", "pattern": "proctest.served", "actions": [{"type": "log"}]}
    service = Service(settings_for(tmp_path, url, [trigger]))
    await service.start()
    try:
        assert service.triggers is not None
        results = service.triggers.results
        event = Event(type="proctest.served", source="t")
        service.store.append(event)

        async def done() -> bool:
            found = await results.get(f"{event.id}:served:0")
            return found is not None and found.status == "succeeded"

        await wait_until(done, results.list, 30)
    finally:
        await service.stop()
    assert service.triggers is not None and not service.triggers.started


def test_process_on_a_memory_store_says_what_would_hold_the_jobs(tmp_path: Path) -> None:
    trigger = {"id": "t0", "pattern": "proctest.y", "actions": [{"type": "log"}]}
    config = write_settings(tmp_path, "memory://proctest", [trigger])
    result = CliRunner().invoke(app, ["--config", str(config), "process"])
    assert result.exit_code == 2, result.output
    assert "sqlite:///" in result.output and "postgresql://" in result.output
    assert "Traceback" not in result.output


async def test_the_index_source_is_asked_per_page(tmp_path: Path) -> None:
    """Saved triggers plug in through ``index_source``: a new index applies from the next page."""
    from tidings.triggers.definitions import parse_trigger  # noqa: PLC0415
    from tidings.triggers.index import TriggerIndex  # noqa: PLC0415

    url = f"sqlite:///{tmp_path / 'events.db'}"
    trigger = {"id": "t0", "pattern": "proctest.other", "actions": [{"type": "log"}]}
    settings = settings_for(tmp_path, url, [trigger])
    current = [TriggerIndex([])]
    store: Any = open_store(url)
    try:
        async with running(settings, store, index_source=lambda: current[0]) as service:
            before = Event(type="proctest.saved", source="t")
            store.append(before)
            await wait_until(
                lambda: service.processor.counts["events"] >= 1, lambda: service.processor.counts
            )
            saved = {"id": "saved", "pattern": "proctest.saved", "actions": [{"type": "log"}]}
            current[0] = TriggerIndex([parse_trigger(saved)])
            after = Event(type="proctest.saved", source="t")
            store.append(after)

            async def ran() -> bool:
                return await service.results.get(f"{after.id}:saved:0") is not None

            await wait_until(ran, service.results.list)
            assert await service.results.get(f"{before.id}:saved:0") is None
            assert service.processor.counts["matches"] == 1
    finally:
        store.close()


async def test_process_runs_triggers_saved_through_the_api(tmp_path: Path) -> None:
    """No trigger in the file, one saved in the store's database (as POST /triggers does):
    ``tidings process`` starts, runs it, and picks up one saved while it runs."""
    from tidings.triggers.results import ActionResults  # noqa: PLC0415
    from tidings.triggers.saved import SavedTriggers  # noqa: PLC0415

    url = f"sqlite:///{tmp_path / 'events.db'}"
    store = open_store(url)  # creates the tables
    saved = SavedTriggers(url)
    saved.create({"id": "saved-one", "pattern": "proctest.saved.one", "actions": [{"type": "log"}]})
    config = write_settings(tmp_path, url, [])
    log = tmp_path / "process.log"
    proc = start_process(config, log)
    results = ActionResults(url)
    try:
        await wait_ready(proc, log, 1)
        first = Event(type="proctest.saved.one")
        store.append(first)
        await wait_until(
            lambda: _status(results, f"{first.id}:saved-one:0"), lambda: log.read_text()[-2000:]
        )
        saved.create(
            {"id": "saved-two", "pattern": "proctest.saved.two", "actions": [{"type": "log"}]}
        )
        second = Event(type="proctest.saved.two")
        store.append(second)
        await wait_until(
            lambda: _status(results, f"{second.id}:saved-two:0"), lambda: log.read_text()[-2000:]
        )
    finally:
        stop_process(proc)
        await results.close()
        saved.close()
        store.close()


async def _status(results: Any, key: str) -> bool:
    found = await results.get(key)
    return found is not None and found.status == "succeeded"
