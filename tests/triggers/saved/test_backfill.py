"""Replay and backfill through the triggers into every job queue (SQLite, PostgreSQL, Redis):
running twice enqueues nothing new, chosen triggers only, a raising condition counted; and the
``tidings triggers`` commands against a configured store, with their exit codes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tidings.cli import app
from tidings.event import Event
from tidings.store import open_store
from tidings.store.base import Criteria
from tidings.triggers.backfill import backfill, check_triggers
from tidings.triggers.definitions import parse_triggers
from tidings.triggers.index import TriggerIndex
from tidings.triggers.jobs import open_job_queue
from tidings.triggers.jobs.redis import RedisJobQueue
from tidings.triggers.saved import SavedTriggers

TRIGGERS: list[dict[str, Any]] = [
    {"id": "big", "pattern": "svtest.order.*", "condition": "data.amount > 100",
     "actions": [{"type": "log"}, {"type": "log", "name": "again"}]},
    {"id": "all-users", "pattern": "svtest.user.*", "actions": [{"type": "log"}]},
    {"id": "typed", "pattern": "svtest.order.*", "condition": "data.amount >= 20",
     "actions": [{"type": "log"}]},
]  # fmt: skip


def events(n: int) -> list[Event]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(Event(type="svtest.user.joined", source="t", data={"i": i}))
        else:
            amount: Any = "many" if i == 5 else i * 10  # "many" >= 20 raises in `typed`
            out.append(Event(type="svtest.order.placed", source="t", data={"amount": amount}))
    return out


def expected_jobs(evs: list[Event]) -> dict[str, int]:
    big = sum(
        2 for e in evs if e.type == "svtest.order.placed" and isinstance(e.data["amount"], int)
        and e.data["amount"] > 100
    )  # fmt: skip
    users = sum(1 for e in evs if e.type == "svtest.user.joined")
    typed = sum(
        1 for e in evs if e.type == "svtest.order.placed" and isinstance(e.data["amount"], int)
        and e.data["amount"] >= 20
    )  # fmt: skip
    return {"big": big, "all-users": users, "typed": typed}


async def test_running_twice_enqueues_nothing_new(queue_url: tuple[str, str]) -> None:
    queue_spec, store_url = queue_url
    store = open_store(store_url)
    queue = open_job_queue(queue_spec, store_url)
    try:
        evs = events(60)
        await store.aappend(evs)
        index = TriggerIndex(parse_triggers(TRIGGERS))
        want = expected_jobs(evs)
        seen: list[int] = []
        first = await backfill(store, index, queue, Criteria(), batch=7,
                               progress=lambda r: seen.append(r.events))  # fmt: skip
        total = sum(want.values())
        assert (first.events, first.enqueued, first.duplicates) == (60, total, 0), first
        # "many" raises in both conditions of svtest.order.*: counted, the others go on
        assert first.condition_errors == 2, first
        assert sorted(e.split("trigger ")[1][:7] for e in first.errors) == ["'big': ", "'typed'"]
        assert seen == sorted(seen) and seen[-1] == 60 and len(seen) == 9, seen
        assert await queue.depth() == total

        again = await backfill(store, index, queue, Criteria(), batch=50)
        assert (again.events, again.enqueued, again.duplicates) == (60, 0, total), again
        assert await queue.depth() == total, "nothing new was queued"

        # after the jobs ran, replaying still adds nothing (done keys stay)
        claimed = await queue.claim("w", 1000, 30.0)
        assert len(claimed) == total
        assert await queue.complete_many(claimed) == total
        third = await backfill(store, index, queue, Criteria(after_position=0))
        assert third.enqueued == 0 and third.duplicates == total, third
        assert await queue.depth() == 0
    finally:
        if isinstance(queue, RedisJobQueue):
            await queue.drop()
        await queue.close()
        store.close()


async def test_chosen_triggers_and_a_position_window(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    store = open_store(url)
    queue = open_job_queue("store", url)
    try:
        recorded = await store.aappend(events(30))
        index = TriggerIndex(parse_triggers(TRIGGERS))
        only = check_triggers(index, ["all-users"])
        window = recorded[9:20]  # positions after the 9th, up to the 20th
        report = await backfill(
            store, index, queue, Criteria(after_position=recorded[8].position),
            only=only, until_position=recorded[19].position, batch=4,
        )  # fmt: skip
        users = sum(1 for r in window if r.event.type == "svtest.user.joined")
        assert (report.events, report.enqueued) == (11, users), report
        assert report.last_position == recorded[19].position
        with pytest.raises(ValueError, match="no such trigger"):
            check_triggers(index, ["nope"])
    finally:
        await queue.close()
        store.close()


# ---------------------------------------------------------------- the commands


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.upper().startswith("TIDINGS_"):
            monkeypatch.delenv(name)
    return CliRunner()


@pytest.fixture
def configured(db_url: str, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A config file with the store at ``db_url``, the triggers, and 30 stored events."""
    path = tmp_path / "tidings.yaml"
    path.write_text(yaml.safe_dump({"store": {"url": db_url}, "triggers": TRIGGERS[:2]}))
    store = open_store(db_url)
    try:
        asyncio.run(store.aappend(events(30)))
    finally:
        store.close()
    yield path, db_url


def test_commands_list_replay_backfill(runner: CliRunner, configured: tuple[Path, str]) -> None:
    path, url = configured
    saved = SavedTriggers(url, config_ids={"big", "all-users"})
    try:
        saved.create({"id": "api-one", "pattern": "svtest.order.*", "actions": [{"type": "log"}]})
    finally:
        saved.close()
    listed = runner.invoke(app, ["--config", str(path), "triggers", "list"])
    assert listed.exit_code == 0, listed.output
    for name in ("all-users", "api-one", "big"):
        assert name in listed.output, listed.output
    as_json = runner.invoke(app, ["--config", str(path), "triggers", "list", "--json"])
    assert [line.split('"id":"')[1].split('"')[0] for line in as_json.output.splitlines()] == [
        "all-users", "api-one", "big",
    ]  # fmt: skip

    args = ["--config", str(path), "triggers", "backfill", "--from", "0", "--trigger", "big"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    big = expected_jobs(events(30))["big"]
    assert f"{big} jobs enqueued, 0 already queued" in first.output, first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert f"0 jobs enqueued, {big} already queued" in second.output, second.output

    replay = runner.invoke(
        app, ["--config", str(path), "triggers", "replay", "--since", "2000-01-01T00:00:00Z"]
    )
    assert replay.exit_code == 0, replay.output
    users = expected_jobs(events(30))["all-users"]
    orders = sum(1 for e in events(30) if e.type == "svtest.order.placed")
    assert f"{users + orders} jobs enqueued, {big} already queued" in replay.output, replay.output

    queue = open_job_queue("store", url)
    try:
        assert asyncio.run(queue.depth()) == big + users + orders
    finally:
        asyncio.run(queue.close())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backfill", "--trigger", "big"], "--from POSITION"),
        (["backfill", "--from", "0", "--since", "2026-01-01", "--trigger", "big"], "not both"),
        (["backfill", "--from", "0", "--trigger", "nope"], "no such trigger"),
        (["replay", "--since", "yesterday"], "ISO 8601"),
    ],
)
def test_user_errors_exit_2(
    runner: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    open_store(url).close()
    path = tmp_path / "tidings.yaml"
    path.write_text(yaml.safe_dump({"store": {"url": url}, "triggers": TRIGGERS[:1]}))
    result = runner.invoke(app, ["--config", str(path), "triggers", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def test_help_shows_examples(runner: CliRunner) -> None:
    group = runner.invoke(app, ["triggers", "--help"])
    assert group.exit_code == 0, group.output
    text = " ".join(group.output.split())  # rich wraps at the terminal's width
    assert "tidings triggers replay --since 2026-01-15T00:00:00Z" in text, group.output
    for command, example in [
        ("replay", "--since 2026-01-15T00:00:00Z --trigger big-orders"),
        ("backfill", "--from 0 --to 5000 --trigger big-orders"),
    ]:
        result = runner.invoke(app, ["triggers", command, "--help"])
        text = " ".join(result.output.split())
        assert result.exit_code == 0 and example in text, result.output
