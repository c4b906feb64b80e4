"""Chain reorganisations: detect them from block hashes, and recover (seed 001, issue 12).

A processor hands every event it processes to ``ChainTracker.observe`` before evaluating
triggers, and calls ``advance`` after enqueueing its jobs. ``observe`` compares the event's
block with the chain's checkpoint (the last block processed) and with the blocks of the events
already stored:

- the next block (checkpoint + 1) whose ``parenthash`` is not the checkpoint's hash: the
  checkpointed block was replaced;
- a block at a height already passed (at or below the checkpoint) whose ``blockhash`` is none
  of the hashes stored at that height: the chain went back and took another branch there.

Either is a ``Reorg``: the last valid block, the depth, and the replaced blocks. ``recover``
then marks the replaced events ``invalidated`` (kept, never deleted), cancels their pending
jobs, marks their executed results ``invalidated``, enqueues each trigger's compensation
action for those results, publishes a ``chain.reorg`` event, and moves the checkpoint back to
the last valid block. The event that showed the reorg is the first of the new branch:
processing goes on with it. See docs/reorgs.md.

Only events recorded *before* that event are invalidated: a plain SQL indexer may already have
stored the new branch behind it, and those events are valid.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tidings.event import Event
from tidings.store.base import Recorded
from tidings.store.chain import chain_extensions, chain_info
from tidings.triggers.checkpoints import Checkpoint, CheckpointTable, open_checkpoints

__all__ = [
    "REORG_TYPE",
    "ChainTracker",
    "CompensationJob",
    "Reorg",
    "ReorgReport",
    "recover",
]

log = logging.getLogger("tidings.triggers.chains")

REORG_TYPE = "chain.reorg"
REORG_SOURCE = "tidings/chains"
_TOP = 2**62  # above every block number


@dataclass(frozen=True, slots=True)
class Reorg:
    """A chain reorganisation found by ``ChainTracker.observe`` (or ``verify``)."""

    chain_id: int
    last_valid_block: int
    depth: int  # blocks replaced: the old head's number minus last_valid_block
    invalidated_blocks: tuple[tuple[int, str | None], ...]  # (number, hash) of the old branch
    new_head: tuple[int, str | None] | None = None  # the block that showed it
    new_parent: str | None = None  # that block's parent hash, when it carried one
    position: int | None = None  # store position of that block's event (None: verify())
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ReorgReport:
    """What ``recover`` did, counted."""

    reorg: Reorg
    invalidated_events: tuple[str, ...]  # ids, in position order
    cancelled_jobs: int
    invalidated_results: tuple[str, ...]  # job keys whose succeeded results are now invalidated
    compensations: int  # compensation jobs enqueued (new ones)
    checkpoint: Checkpoint | None  # the chain's checkpoint after recovery
    event: Event | None = None  # the chain.reorg event published


@dataclass(frozen=True, slots=True)
class CompensationJob:
    """A compensation job in the shape of the job queue's ``Job`` (triggers contract): used
    until ``recover`` is given the queue's own job factory (``make_job=``)."""

    key: str
    event_id: str
    trigger_id: str
    action_index: int
    action: Any  # tidings.triggers.definitions.ActionSpec: the trigger's compensation
    event: Event
    partition: str | None = None
    compensation: bool = True
    attempts: int = 0
    position: int | None = None


class _Queue(Protocol):
    async def enqueue(self, jobs: Sequence[Any]) -> int: ...

    async def cancel_for_events(self, event_ids: Sequence[str]) -> int: ...


class _Results(Protocol):
    def invalidate_for_events(self, event_ids: Sequence[str]) -> Any: ...


class _Trigger(Protocol):
    """What recovery reads of a ``tidings.triggers.definitions.Trigger``."""

    @property
    def id(self) -> str: ...

    @property
    def compensation(self) -> Any: ...


class _Index(Protocol):
    def match(self, event_type: str) -> Sequence[_Trigger]: ...


Publish = Callable[[Event], Awaitable[Any] | Any]


class ChainTracker:
    """Checkpoints per chain and reorg detection over ``store`` (see the module docstring).

    One tracker should own a chain: processors that share the work partition it by
    ``chain_id`` (a chain split across processors would have two views of its head).
    Checkpoints are cached in the tracker and written through; ``advance`` writes only when
    the block changes, so the many events of one block cost one upsert.
    """

    def __init__(self, store: Any, *, checkpoints: CheckpointTable | None = None) -> None:
        self.store = store
        self._table = checkpoints if checkpoints is not None else open_checkpoints(store)
        self._cache: dict[int, Checkpoint | None] = {}

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, chain_id: int) -> Checkpoint | None:
        """The chain's checkpoint: the last block processed (None before the first)."""
        if chain_id not in self._cache:
            self._cache[chain_id] = self._table.get(chain_id)
        return self._cache[chain_id]

    def checkpoints(self) -> list[Checkpoint]:
        """Every chain's checkpoint, read from the table (for metrics and the API)."""
        return self._table.all()

    def advance(self, chain_id: int, block_number: int, block_hash: str | None) -> None:
        """Record that ``block_number`` (``block_hash``) of ``chain_id`` was processed. Never
        moves back; an event without a block hash carries nothing to compare and is skipped."""
        if block_hash is None:
            return
        now = self.checkpoint(chain_id)
        if now is not None and (now.block_number, now.block_hash) == (block_number, block_hash):
            return
        if now is not None and now.block_number > block_number:
            return
        self._cache[chain_id] = self._table.advance(chain_id, block_number, block_hash)

    def advance_to(self, recorded: Recorded) -> None:
        """``advance`` with the chain coordinates of a processed event (none: nothing)."""
        info = chain_info(recorded.event)
        if info is not None and info.chain_id is not None and info.block_number is not None:
            self.advance(info.chain_id, info.block_number, info.block_hash)

    def reset(self, chain_id: int, block_number: int | None, block_hash: str | None) -> None:
        """Set the checkpoint back (or forget it when the block or its hash is unknown)."""
        if block_number is None or block_hash is None or block_number < 0:
            self._table.forget(chain_id)
            self._cache[chain_id] = None
        else:
            self._cache[chain_id] = self._table.reset(chain_id, block_number, block_hash)

    # ------------------------------------------------------------------ detection

    def _hashes(self, chain_id: int, height: int, before: int | None) -> set[str | None]:
        return {h for _, h in self.store.chain_blocks(chain_id, height, height, before)}

    def observe(self, recorded: Recorded) -> Reorg | None:
        """The reorg ``recorded``'s block shows, if it shows one (see the module docstring)."""
        if recorded.invalidated:
            return None
        info = chain_info(recorded.event)
        if info is None or info.chain_id is None or info.block_number is None:
            return None
        chain, number = info.chain_id, info.block_number
        cp = self.checkpoint(chain)
        if cp is None or number > cp.block_number + 1:
            return None  # nothing to compare with (first block seen, or a gap)
        before = recorded.position
        if number == cp.block_number + 1:
            if info.parent_hash is None or info.parent_hash == cp.block_hash:
                return None
            last_valid = cp.block_number - 1
            reason = (
                f"block {number} names parent {info.parent_hash}, but block "
                f"{cp.block_number} was {cp.block_hash}"
            )
        else:
            if info.block_hash is None or info.block_hash == _hash_at(cp, number):
                return None
            # the blocks at this height and above stored before this event: the branch it
            # would replace. None at all: this event is how the branch was first seen (a
            # redelivery after a restart), not a rewind.
            above = self.store.chain_blocks(chain, number, _TOP, before)
            known = {h for n, h in above if n == number}
            if not above or info.block_hash in known:
                return None  # a redelivery, or another log of a block already seen
            last_valid = number - 1
            reason = (
                f"block {number} is {info.block_hash}, but {sorted(map(str, known)) or 'none'} "
                f"was processed at that height"
            )
            if info.parent_hash is not None and number >= 1:
                parents = self._hashes(chain, number - 1, before)
                if parents and info.parent_hash not in parents:
                    last_valid = number - 2  # its parent is not ours either
        head = (number, info.block_hash)
        return self._reorg(chain, last_valid, cp, before, head, info.parent_hash, reason)

    def verify(self, chain_id: int) -> Reorg | None:
        """A reorg if the checkpoint's hash no longer matches a valid event at its height
        (another writer rewrote or invalidated that block's events)."""
        cp = self.checkpoint(chain_id)
        if cp is None:
            return None
        known = self._hashes(chain_id, cp.block_number, None)
        if cp.block_hash in known:
            return None
        reason = (
            f"checkpoint block {cp.block_number} is {cp.block_hash}, but the valid events at "
            f"that height are {sorted(map(str, known)) or 'none'}"
        )
        return self._reorg(chain_id, cp.block_number - 1, cp, None, None, None, reason)

    def _reorg(
        self,
        chain: int,
        last_valid: int,
        cp: Checkpoint,
        before: int | None,
        new_head: tuple[int, str | None] | None,
        new_parent: str | None,
        reason: str,
    ) -> Reorg:
        last_valid = max(last_valid, -1)
        blocks = tuple(self.store.chain_blocks(chain, last_valid + 1, _TOP, before))
        old_head = max([cp.block_number, *(b for b, _ in blocks)])
        reorg = Reorg(
            chain_id=chain,
            last_valid_block=last_valid,
            depth=old_head - last_valid,
            invalidated_blocks=blocks,
            new_head=new_head,
            new_parent=new_parent,
            position=before,
            reason=reason,
        )
        log.warning(
            "chain %s reorganised: %s; last valid block %s, depth %s",
            chain,
            reason,
            last_valid,
            reorg.depth,
        )
        return reorg

    async def recover(
        self,
        reorg: Reorg,
        *,
        queue: _Queue,
        results: _Results,
        triggers: _Index | Callable[[], _Index],
        publish: Publish | None = None,
        make_job: Callable[..., Any] | None = None,
    ) -> ReorgReport:
        """Recover from ``reorg``: see ``recover``."""
        return await recover(
            reorg,
            tracker=self,
            queue=queue,
            results=results,
            triggers=triggers,
            publish=publish,
            make_job=make_job,
        )

    def close(self) -> None:
        self._table.close()


def _hash_at(cp: Checkpoint, number: int) -> str | None:
    return cp.block_hash if cp.block_number == number else None


# ---------------------------------------------------------------------- recovery


def _trigger_of(triggers: Any, event: Event, trigger_id: str) -> _Trigger | None:
    index: _Index = (
        triggers() if callable(triggers) and not hasattr(triggers, "match") else triggers
    )
    for trigger in index.match(event.type):
        if trigger.id == trigger_id:
            return trigger
    return None


def _split_key(key: str, event_ids: Sequence[str]) -> tuple[str, str, int] | None:
    """(event_id, trigger_id, action_index) of a job key ``event:trigger:index``; the event
    id is matched against the known ids, so ids and trigger ids may contain colons."""
    for event_id in event_ids:
        if key.startswith(event_id + ":"):
            trigger_id, sep, index = key[len(event_id) + 1 :].rpartition(":")
            if sep and index.isdigit():
                return event_id, trigger_id, int(index)
    return None


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def recover(
    reorg: Reorg,
    *,
    tracker: ChainTracker,
    queue: _Queue,
    results: _Results,
    triggers: _Index | Callable[[], _Index],
    publish: Publish | None = None,
    make_job: Callable[..., Any] | None = None,
) -> ReorgReport:
    """Recover from ``reorg`` (see the module docstring); return what was done, counted.

    Each step is idempotent (a job key seen before is not enqueued again; events already
    invalidated are not marked twice), so a recovery cut short by a crash can run again.
    """
    store = tracker.store
    marked: list[Recorded] = await asyncio.to_thread(
        store.invalidate_chain, reorg.chain_id, reorg.last_valid_block, reorg.position
    )
    ids = [rec.event.id for rec in marked]
    cancelled = int(await queue.cancel_for_events(ids)) if ids else 0
    keys: list[str] = list(await _maybe(results.invalidate_for_events(ids))) if ids else []
    by_id = {rec.event.id: rec for rec in marked}
    make = make_job or CompensationJob
    jobs: list[Any] = []
    for key in keys:
        if key.endswith(":compensate"):
            continue  # a compensation is not compensated again
        parts = _split_key(key, ids)
        if parts is None:
            log.warning("chain %s: result key %r names no invalidated event", reorg.chain_id, key)
            continue
        event_id, trigger_id, index = parts
        rec = by_id[event_id]
        trigger = _trigger_of(triggers, rec.event, trigger_id)
        if trigger is None or trigger.compensation is None:
            continue
        jobs.append(
            make(
                key=f"{key}:compensate",
                event_id=event_id,
                trigger_id=trigger_id,
                action_index=index,
                action=trigger.compensation,
                event=rec.event,
                partition=None,
                compensation=True,
                attempts=0,
                position=rec.position,
            )
        )
    compensations = int(await queue.enqueue(jobs)) if jobs else 0

    checkpoint = await asyncio.to_thread(_reset_checkpoint, tracker, reorg)
    event = _reorg_event(reorg, marked)
    if publish is not None:
        await _maybe(publish(event))
    log.warning(
        "chain %s: recovered from a reorg of depth %s: %s events invalidated, %s jobs "
        "cancelled, %s results invalidated, %s compensations enqueued",
        reorg.chain_id,
        reorg.depth,
        len(ids),
        cancelled,
        len(keys),
        compensations,
    )
    return ReorgReport(
        reorg=reorg,
        invalidated_events=tuple(ids),
        cancelled_jobs=cancelled,
        invalidated_results=tuple(keys),
        compensations=compensations,
        checkpoint=checkpoint,
        event=event,
    )


def _reset_checkpoint(tracker: ChainTracker, reorg: Reorg) -> Checkpoint | None:
    """Back to the last valid block: its hash from the new block's parent when that block is
    the next one, else from the valid events stored at that height, else forgotten (the next
    block processed sets it)."""
    last = reorg.last_valid_block
    block_hash: str | None = None
    head = reorg.new_head
    if head is not None and head[0] == last + 1:
        block_hash = reorg.new_parent
    if block_hash is None and last >= 0:
        hashes = sorted(
            h
            for _, h in tracker.store.chain_blocks(reorg.chain_id, last, last, reorg.position)
            if h is not None
        )
        block_hash = hashes[0] if len(hashes) == 1 else None
    tracker.reset(reorg.chain_id, last if block_hash is not None else None, block_hash)
    return tracker.checkpoint(reorg.chain_id)


def _reorg_event(reorg: Reorg, marked: Sequence[Recorded]) -> Event:
    head = reorg.new_head
    return Event(
        type=REORG_TYPE,
        source=REORG_SOURCE,
        subject=str(reorg.chain_id),
        extensions=chain_extensions(chain_id=reorg.chain_id),
        data={
            "chain_id": reorg.chain_id,
            "depth": reorg.depth,
            "last_valid_block": reorg.last_valid_block,
            "invalidated_blocks": [
                {"number": number, "hash": block_hash}
                for number, block_hash in reorg.invalidated_blocks
            ],
            "invalidated_events": len(marked),
            "new_head": None if head is None else {"number": head[0], "hash": head[1]},
            "reason": reorg.reason,
        },
    )
