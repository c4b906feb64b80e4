"""A fork of depth 3 through the running processor on PostgreSQL: the replaced events
invalidated, their pending jobs cancelled, their executed results invalidated and compensated,
the ``chain.reorg`` event published, and processing resumed on the new branch, all counted
in the tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.triggers.proc.conftest import pg_rows, redis_queue, running, settings_for, wait_until
from tests.triggers.test_chains import CHAIN, branch
from tidings.store import Criteria, open_store
from tidings.store.chain import chain_info
from tidings.triggers.actions import ActionContext
from tidings.triggers.actions.registry import register_action, unregister_action
from tidings.triggers.chains import REORG_TYPE

psycopg = pytest.importorskip("psycopg")

from tests.contract.test_store_postgres import db, session_db  # noqa: E402, F401


def _settle(ctx: ActionContext) -> dict[str, Any]:
    """Fails on block 10 of branch a: its jobs wait for a retry (pending) when the fork comes."""
    info = chain_info(ctx.event)
    if info is not None and info.block_hash == "0xa10" and not ctx.compensation:
        raise RuntimeError("block 10 is not final yet")
    return {"settled": ctx.event.id}


TRIGGERS = [
    {
        "id": "notify",
        "pattern": "chaintest.transfer",
        "actions": [{"type": "log", "message": "transfer {id}"}],
        "compensation": {"type": "log", "message": "undo {id}"},
    },
    {"id": "settle", "pattern": "chaintest.transfer", "actions": [{"type": "proctest_settle"}]},
]


def _statuses(url: str) -> dict[str, int]:
    rows = pg_rows(url, "SELECT status, count(*) FROM action_results GROUP BY status")
    return {str(s): int(n) for s, n in rows}


@pytest.mark.parametrize("queue", ["store", "redis"])
async def test_a_fork_of_depth_3_through_the_processor(
    db: str,  # noqa: F811
    tmp_path: Path,
    queue: str,
) -> None:
    register_action("proctest_settle", _settle)
    retry = {"max_retries": 5, "initial_delay": 120, "max_delay": 300}
    where = "store" if queue == "store" else redis_queue()
    settings = settings_for(tmp_path, db, TRIGGERS, retry=retry, queue=where)
    store: Any = open_store(db)
    try:
        async with running(settings, store) as service:
            old = branch("a", 1, 10, "0xa0")  # 20 events, two logs per block
            store.append(old)

            def settled_a() -> bool:
                s = _statuses(db)
                return s.get("succeeded", 0) == 38 and s.get("failed", 0) == 2

            await wait_until(settled_a, lambda: _statuses(db), 60)
            block_10 = [f"{e.id}:settle:0" for e in old[18:]]
            # block 10's settle jobs wait for their retry
            assert [await service.queue.state(k) for k in block_10] == ["pending", "pending"]

            # the chain reorganises: b8 (parent a7) .. b11 replace a8, a9, a10
            new = branch("b", 8, 11, "0xa7")
            store.append(new)
            new_ids = {e.id for e in new}

            def resumed() -> bool:
                done = pg_rows(
                    db,
                    "SELECT count(*) FROM action_results WHERE status = 'succeeded' "
                    "AND event_id = ANY(%s)",
                    (list(new_ids),),
                )
                comp = pg_rows(
                    db, "SELECT count(*) FROM action_results WHERE key LIKE '%%:compensate'"
                )
                return done == [(16,)] and comp == [(6,)] and _statuses(db).get("compensated") == 6

            await wait_until(resumed, lambda: (_statuses(db), service.processor.counts), 60)

            (report,) = service.processor.reorgs
            reorg = report.reorg
            assert (reorg.chain_id, reorg.last_valid_block, reorg.depth) == (CHAIN, 7, 3)
            assert reorg.invalidated_blocks == ((8, "0xa8"), (9, "0xa9"), (10, "0xa10"))
            replaced = [e.id for e in old[14:]]
            assert list(report.invalidated_events) == replaced
            assert pg_rows(db, "SELECT count(*) FROM events WHERE invalidated") == [(6,)]
            # block 10's pending settle jobs were cancelled, not run
            assert report.cancelled_jobs == 2
            assert [await service.queue.state(k) for k in block_10] == ["cancelled"] * 2
            assert block_10 == [f"{i}:settle:0" for i in replaced[4:]]
            # executed results of the replaced events: invalidated, and compensated where the
            # trigger has a compensation (notify), invalidated only where not (settle)
            assert len(report.invalidated_results) == 10
            assert report.compensations == 6
            s = _statuses(db)
            assert (s["compensated"], s["invalidated"]) == (6, 4), s
            # the chain.reorg event, once
            notes = store.load(Criteria(types=(REORG_TYPE,)))
            assert len(notes) == 1
            assert notes[0].event.data["depth"] == 3
            assert notes[0].event.data["last_valid_block"] == 7
            # resumption: the checkpoint at the new head, the new branch's results all there
            cp = pg_rows(db, "SELECT block_number, block_hash FROM checkpoints")
            assert cp == [(11, "0xb11")]
            assert service.processor.counts["reorgs"] == 1
            if queue == "redis":
                await service.queue.drop()  # type: ignore[attr-defined]
    finally:
        unregister_action("proctest_settle")
        store.close()
