"""The job queue on SQLite, PostgreSQL and Redis (real servers): idempotent enqueue, leases,
retries, the dead-letter queue, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from tidings.event import Event
from tidings.store.base import StoreError
from tidings.triggers.definitions import ActionSpec
from tidings.triggers.jobs import Job, JobQueue, job_key, open_job_queue

LOG = ActionSpec(type="log", options={"message": "{type}"})


def jobs_for(events: list[Event], trigger: str = "t1", actions: int = 1) -> list[Job]:
    return [
        Job.for_event(e, trigger, i, LOG, position=n + 1, partition="p")
        for n, e in enumerate(events)
        for i in range(actions)
    ]


def events(n: int) -> list[Event]:
    return [Event(type="jobs.test.made", data={"n": i}) for i in range(n)]


async def test_enqueue_of_a_key_seen_before_adds_nothing_whatever_its_state(
    queue: JobQueue,
) -> None:
    batch = jobs_for(events(6))
    assert await queue.enqueue(batch) == 6
    assert await queue.enqueue(batch) == 0  # queued
    assert await queue.depth() == 6

    claimed = await queue.claim("w1", 3, 30)
    assert len(claimed) == 3
    assert await queue.complete(claimed[0])  # done
    assert await queue.fail(claimed[1], "boom", None)  # dead
    # claimed[2] is running
    pending = [j for j in batch if j.key not in {c.key for c in claimed}]
    assert await queue.cancel_for_events([pending[0].event_id]) == 1  # cancelled

    states = {j.key: await queue.state(j.key) for j in batch}
    assert sorted(states.values()) == ["cancelled", "dead", "done", "pending", "pending", "running"]
    again = jobs_for([j.event for j in batch])
    assert await queue.enqueue(again) == 0, states
    assert {j.key: await queue.state(j.key) for j in batch} == states
    assert await queue.enqueue([*again, *jobs_for(events(2))]) == 2  # only the new ones count
    assert (queue.counts["enqueued"], queue.counts["duplicates"]) == (8, 6 + 6 + 6)


async def test_the_key_is_event_trigger_and_action_index() -> None:
    e = Event(type="jobs.test.key", id="ev-1")
    job = Job.for_event(e, "trig", 2, LOG)
    assert job.key == "ev-1:trig:2" == job_key("ev-1", "trig", 2)
    comp = Job.for_event(e, "trig", 0, LOG, compensation=True)
    assert comp.key == "ev-1:trig:0:compensate" and comp.compensation


async def test_a_claimed_job_comes_back_whole(queue: JobQueue) -> None:
    event = Event(type="jobs.test.whole", data={"x": [1, 2]}, extensions={"chainid": 5})
    spec = ActionSpec(
        type="publish", options={"event_type": "a.b", "data": {"k": "{data.x}"}}, name="p"
    )
    job = Job.for_event(event, "t9", 3, spec, position=42, partition="chain-5")
    assert await queue.enqueue([job]) == 1
    (got,) = await queue.claim("w1", 10, 30)
    assert (got.key, got.event_id, got.trigger_id, got.action_index) == (job.key, event.id, "t9", 3)
    assert got.event == event
    assert (got.action.type, dict(got.action.options), got.action.name) == (
        "publish",
        {"event_type": "a.b", "data": {"k": "{data.x}"}},
        "p",
    )
    assert (got.position, got.partition, got.compensation) == (42, "chain-5", False)
    assert got.attempts == 1
    assert got.token


async def test_two_claimers_never_get_the_same_job(
    queue: JobQueue, queue_url: tuple[str, str]
) -> None:
    other = open_job_queue(*queue_url)
    try:
        await queue.enqueue(jobs_for(events(300)))
        seen: dict[str, str] = {}
        duplicates: list[str] = []

        async def claimer(q: JobQueue, name: str) -> None:
            while True:
                got = await q.claim(name, 7, 30)
                if not got:
                    return
                for j in got:
                    if j.key in seen:
                        duplicates.append(j.key)
                    seen[j.key] = name
                await q.complete_many(got)

        await asyncio.gather(claimer(queue, "a"), claimer(other, "b"), claimer(queue, "c"))
        assert not duplicates, duplicates[:5]
        assert len(seen) == 300
        assert await queue.depth() == 0
    finally:
        await other.close()


async def test_an_expired_lease_is_claimed_again_and_the_old_holder_changes_nothing(
    queue: JobQueue,
) -> None:
    await queue.enqueue(jobs_for(events(1)))
    (first,) = await queue.claim("dead-worker", 5, 0.2)
    assert await queue.claim("w2", 5, 30) == []  # leased
    await asyncio.sleep(0.3)
    (second,) = await queue.claim("w2", 5, 30)
    assert second.key == first.key and second.attempts == 2 and second.token != first.token
    assert not await queue.complete(first)  # the lease was taken over
    assert not await queue.fail(first, "late", None)
    assert await queue.state(first.key) == "running"
    assert await queue.complete(second)
    assert await queue.state(first.key) == "done"


async def test_fail_with_retry_at_waits_then_without_it_is_dead_and_retry_dead_revives(
    queue: JobQueue,
) -> None:
    await queue.enqueue(jobs_for(events(2)))
    a, b = await queue.claim("w", 5, 30)
    assert await queue.fail(a, "ConnectionError: refused", time.time() + 0.3)
    assert await queue.fail(b, "ValueError: bad", None)
    assert await queue.state(a.key) == "pending" and await queue.state(b.key) == "dead"
    assert await queue.claim("w", 5, 30) == []  # a waits for its retry time, b is dead
    assert await queue.depth() == 1
    await asyncio.sleep(0.35)
    (again,) = await queue.claim("w", 5, 30)
    assert again.key == a.key and again.attempts == 2 and again.error == "ConnectionError: refused"

    (dead,) = await queue.dead()
    assert dead.key == b.key and dead.error == "ValueError: bad" and dead.attempts == 1
    assert dead.event == b.event
    assert await queue.retry_dead(b.key) == 1
    assert await queue.retry_dead() == 0
    (revived,) = await queue.claim("w", 5, 30)
    assert revived.key == b.key and revived.attempts == 1
    assert await queue.dead() == []


async def test_cancel_for_events_cancels_pending_jobs_only(queue: JobQueue) -> None:
    evs = events(4)
    batch = jobs_for(evs, actions=2)  # 8 jobs, 2 per event
    await queue.enqueue(batch)
    claimed = await queue.claim("w", 2, 30)  # the first event's two jobs (by position)
    assert {j.event_id for j in claimed} == {evs[0].id}
    (running, done) = claimed
    await queue.complete(done)
    later = await queue.claim("w", 1, 30)
    await queue.fail(later[0], "x", time.time() + 60)  # pending, waiting for a retry
    assert later[0].event_id == evs[1].id

    n = await queue.cancel_for_events([evs[0].id, evs[1].id, "no-such-event"])
    assert n == 2  # evs[1]'s two pending ones (one waiting for a retry); evs[0]'s are not pending
    assert await queue.state(running.key) == "running"
    assert await queue.state(done.key) == "done"
    assert {await queue.state(j.key) for j in batch if j.event_id == evs[1].id} == {"cancelled"}
    assert {await queue.state(j.key) for j in batch if j.event_id in (evs[2].id, evs[3].id)} == {
        "pending"
    }
    assert await queue.cancel_for_events([evs[1].id]) == 0
    assert await queue.enqueue(batch) == 0


async def test_release_hands_jobs_back_without_counting_the_attempt(queue: JobQueue) -> None:
    await queue.enqueue(jobs_for(events(2)))
    got = await queue.claim("w", 5, 30)
    assert await queue.release(got) == 2
    again = await queue.claim("w", 5, 30)
    assert sorted(j.key for j in again) == sorted(j.key for j in got)
    assert [j.attempts for j in again] == [1, 1]


async def test_a_big_batch_is_one_call(queue: JobQueue) -> None:
    batch = jobs_for(events(2000), actions=2)
    started = time.perf_counter()
    assert await queue.enqueue(batch) == 4000
    took = time.perf_counter() - started
    assert await queue.enqueue(batch[:100]) == 0
    assert await queue.depth() == 4000
    print(f"enqueue of 4000 jobs: {took * 1000:.0f} ms ({4000 / took:.0f} jobs/s)")


def test_open_job_queue_names_what_it_takes() -> None:
    with pytest.raises(ValueError, match=r"processor\.queue: expected 'store'.*'kafka://x'"):
        open_job_queue("kafka://x", "sqlite:///x.db")
    with pytest.raises(StoreError, match="durable database"):
        open_job_queue("store", "memory://")


async def test_bad_input_is_refused_naming_it_and_nothing_is_written(queue: JobQueue) -> None:
    good = jobs_for(events(3))
    bad = Job.for_event(Event(type="jobs.test.bad"), "t", 0, ActionSpec("log", {"x": object()}))
    with pytest.raises(ValueError, match="action 'log': its options must be JSON values"):
        await queue.enqueue([*good, bad])
    assert await queue.depth() == 0
    with pytest.raises(TypeError, match=r"enqueue\(\): expected Jobs, got dict \(no key, event_id"):
        await queue.enqueue([{"key": "x"}])  # type: ignore[list-item]
    wrong = dataclasses.replace(good[0], action={"type": "log"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="action: expected ActionSpec, got dict"):
        await queue.enqueue([wrong])
    assert await queue.depth() == 0
    with pytest.raises(ValueError, match=r"claim\(limit=\): expected an int >= 1, got 0"):
        await queue.claim("w", 0, 30)
    with pytest.raises(ValueError, match=r"claim\(lease_seconds=\): expected seconds > 0"):
        await queue.claim("w", 1, -1)
    with pytest.raises(ValueError, match=r"claim\(worker_id=\)"):
        await queue.claim("", 1, 30)
    with pytest.raises(TypeError, match="not a string"):
        await queue.cancel_for_events("ev-1")
    with pytest.raises(ValueError, match="was not claimed"):
        await queue.complete(good[0])
    with pytest.raises(ValueError, match=r"dead\(limit=\)"):
        await queue.dead(limit=0)


@dataclasses.dataclass(frozen=True)
class Shaped:
    """A job in the contract's shape from another part (the reorg recovery's own class)."""

    key: str
    event_id: str
    trigger_id: str
    action_index: int
    action: ActionSpec
    event: Event
    partition: str | None = None
    compensation: bool = True
    attempts: int = 0
    position: int | None = None


async def test_a_job_shaped_object_is_taken_as_a_job(queue: JobQueue) -> None:
    event = Event(type="jobs.test.shaped")
    shaped = Shaped(f"{event.id}:t:0:compensate", event.id, "t", 0, LOG, event, position=3)
    assert await queue.enqueue([shaped]) == 1
    assert await queue.enqueue([shaped]) == 0
    (got,) = await queue.claim("w", 5, 30)
    assert (got.key, got.compensation, got.position, got.event) == (shaped.key, True, 3, event)
