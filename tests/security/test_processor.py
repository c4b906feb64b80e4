"""The triggers processor fed a poison event: a stored row whose body no longer decodes (written
by hand, or by an older schema) must not stop every event after it from being processed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tests.triggers.proc.conftest import running, settings_for, wait_until
from tidings.event import Event
from tidings.store import open_store


async def test_a_poison_event_does_not_halt_processing(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'poison.db'}"
    triggers = [{"id": "every", "pattern": "sectest.**", "actions": [{"type": "log"}]}]
    settings = settings_for(tmp_path, db, triggers, start="beginning")  # the poison is history
    store: Any = open_store(db)
    try:
        before, poison, after = (Event(type="sectest.e", source="t", data={"n": n})
                                 for n in range(3))  # fmt: skip
        store.append([before, poison, after])
        with sqlite3.connect(tmp_path / "poison.db") as conn:
            conn.execute("UPDATE tidings_events SET body = ? WHERE id = ?",
                         ('{"specversion": "1.0", "id": ', poison.id))  # fmt: skip
        async with running(settings, store) as service:

            async def both() -> bool:
                keys = {r.key for r in await service.results.list(limit=100)}
                return {f"{before.id}:every:0", f"{after.id}:every:0"} <= keys

            async def seen() -> Any:
                rows = await service.results.list(limit=100)
                return [r.key for r in rows], service.processor.health()

            await wait_until(both, seen, 30)
    finally:
        store.close()
