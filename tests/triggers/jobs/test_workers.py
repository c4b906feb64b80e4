"""ActionWorkers on SQLite, PostgreSQL and Redis: results recorded, retries then dead with the
error, the timeout per attempt, two workers never running one job at once, and a worker process
SIGKILLed while holding claims: its jobs run again after the lease, one result row per key."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.triggers.jobs.conftest import wait_for
from tidings.event import Event
from tidings.retry import RetryPolicy
from tidings.triggers.actions import (
    ActionContext,
    PermanentActionError,
    register_action,
    unregister_action,
)
from tidings.triggers.definitions import ActionSpec
from tidings.triggers.jobs import Job, JobQueue, open_job_queue
from tidings.triggers.results import ActionResults
from tidings.triggers.workers import ActionWorkers

FAST = RetryPolicy(max_retries=2, initial_delay=0.05, max_delay=0.05)


def make_jobs(action: str, n: int, options: dict[str, Any] | None = None) -> list[Job]:
    spec = ActionSpec(action, options or {})
    return [
        Job.for_event(Event(type="workers.test.event", data={"i": i}), "wt", 0, spec, position=i)
        for i in range(n)
    ]


@asynccontextmanager
async def running(workers: ActionWorkers) -> AsyncIterator[ActionWorkers]:
    task = asyncio.create_task(workers.run_until_stopped())
    try:
        yield workers
    finally:
        await workers.stop()
        await task


@pytest.fixture
def action() -> Any:
    """Register a test action ``workers.test.<name>`` for the length of one test."""
    names: list[str] = []

    def register(name: str, fn: Callable[[ActionContext], Any]) -> str:
        full = f"workers.test.{name}"
        register_action(full, fn)
        names.append(full)
        return full

    yield register
    for name in names:
        unregister_action(name)


async def statuses(results: ActionResults) -> dict[str, int]:
    return {k: v for k, v in (await results.counts()).items() if v}


async def test_jobs_run_and_every_result_is_recorded(
    queue: JobQueue, results: ActionResults, action: Any
) -> None:
    ran: Counter[str] = Counter()

    async def work(ctx: ActionContext) -> dict[str, Any]:
        ran[ctx.key] += 1
        return {"i": ctx.event.data["i"], "attempt": ctx.attempt}

    jobs = make_jobs(action("ok", work), 40)
    await queue.enqueue(jobs)
    workers = ActionWorkers(queue, results, retry=FAST, concurrency=8, poll_interval=0.02)
    async with running(workers):
        await wait_for(lambda: _count(results, "succeeded", 40), 30, lambda: statuses(results))
    assert set(ran.values()) == {1} and len(ran) == 40
    assert await queue.depth() == 0
    assert {await queue.state(j.key) for j in jobs} == {"done"}
    one = await results.get(jobs[7].key)
    assert one is not None
    assert (one.status, one.output, one.attempts, one.action_type) == (
        "succeeded",
        {"i": 7, "attempt": 1},
        1,
        "workers.test.ok",
    )
    assert one.duration_ms is not None and one.duration_ms >= 0
    assert workers.counts["succeeded"] == 40


async def _count(results: ActionResults, status: str, n: int) -> bool:
    return (await results.counts())[status] >= n


async def test_a_failing_action_is_retried_then_dead_with_its_error(
    queue: JobQueue, results: ActionResults, action: Any
) -> None:
    attempts: Counter[str] = Counter()

    def boom(ctx: ActionContext) -> None:
        attempts[ctx.key] += 1
        raise ConnectionError(f"refused on attempt {ctx.attempt}")

    flaky_calls: Counter[str] = Counter()

    def flaky(ctx: ActionContext) -> dict[str, int]:
        flaky_calls[ctx.key] += 1
        if ctx.attempt < 3:
            raise TimeoutError("slow upstream")
        return {"after": ctx.attempt}

    dead_jobs = make_jobs(action("boom", boom), 2)
    flaky_jobs = make_jobs(action("flaky", flaky), 2)
    await queue.enqueue([*dead_jobs, *flaky_jobs])
    workers = ActionWorkers(queue, results, retry=FAST, concurrency=4, poll_interval=0.02)
    async with running(workers):
        await wait_for(
            lambda: _settled(results, dead=2, succeeded=2), 30, lambda: statuses(results)
        )
    assert set(attempts.values()) == {3}  # max_retries=2: three attempts
    for job in dead_jobs:
        got = await results.get(job.key)
        assert got is not None
        assert (got.status, got.attempts) == ("dead", 3)
        assert got.error == "ConnectionError: refused on attempt 3"
        assert await queue.state(job.key) == "dead"
    dlq = {j.key: j for j in await queue.dead()}
    assert set(dlq) == {j.key for j in dead_jobs}
    assert dlq[dead_jobs[0].key].error == "ConnectionError: refused on attempt 3"
    for job in flaky_jobs:
        got = await results.get(job.key)
        assert got is not None and (got.status, got.attempts, got.output) == (
            "succeeded",
            3,
            {"after": 3},
        )
    assert workers.counts["retried"] == 2 * 2 + 2 * 2 and workers.counts["dead"] == 2


async def _settled(results: ActionResults, **want: int) -> bool:
    counts = await results.counts()
    return all(counts[k] >= v for k, v in want.items())


async def test_a_permanent_error_or_bad_options_go_dead_at_once(
    queue: JobQueue, results: ActionResults, action: Any
) -> None:
    def refuse(ctx: ActionContext) -> None:
        raise PermanentActionError("the event lacks an email address")

    jobs = [
        *make_jobs(action("refuse", refuse), 1),
        *make_jobs("log", 1, {"level": "shout"}),
        *make_jobs("workers.test.never-registered", 1),
    ]
    await queue.enqueue(jobs)
    workers = ActionWorkers(queue, results, retry=FAST, concurrency=4, poll_interval=0.02)
    async with running(workers):
        await wait_for(lambda: _settled(results, dead=3), 30, lambda: statuses(results))
    errors = [(await results.get(j.key)) for j in jobs]
    assert [(e.attempts if e else None) for e in errors] == [1, 1, 1]
    assert errors[0] and errors[0].error == "the event lacks an email address"
    assert errors[1] and "option 'level'" in (errors[1].error or "")
    assert errors[2] and "unknown action type 'workers.test.never-registered'" in (
        errors[2].error or ""
    )


async def test_every_attempt_is_bounded_by_the_timeout(
    queue: JobQueue, results: ActionResults, action: Any
) -> None:
    async def hang(ctx: ActionContext) -> None:
        await asyncio.sleep(30)

    jobs = make_jobs(action("hang", hang), 1)
    await queue.enqueue(jobs)
    workers = ActionWorkers(
        queue, results, retry=RetryPolicy(max_retries=1, initial_delay=0.01, max_delay=0.01),
        timeout=0.2, lease_seconds=5, poll_interval=0.02,
    )  # fmt: skip
    started = time.monotonic()
    async with running(workers):
        await wait_for(lambda: _settled(results, dead=1), 30, lambda: statuses(results))
    assert time.monotonic() - started < 10
    got = await results.get(jobs[0].key)
    assert got is not None and got.error == "timed out after 0.2s (attempt 2)"
    assert got.attempts == 2


async def test_two_workers_never_run_one_job_at_once(
    queue: JobQueue, queue_url: tuple[str, str], results: ActionResults, action: Any
) -> None:
    active: set[str] = set()
    overlaps: list[str] = []
    runs: Counter[str] = Counter()

    async def careful(ctx: ActionContext) -> None:
        if ctx.key in active:
            overlaps.append(ctx.key)
        active.add(ctx.key)
        runs[ctx.key] += 1
        await asyncio.sleep(0.002)
        active.discard(ctx.key)

    jobs = make_jobs(action("careful", careful), 150)
    await queue.enqueue(jobs)
    other_queue = open_job_queue(*queue_url)
    other_results = ActionResults(queue_url[1])
    one = ActionWorkers(queue, results, concurrency=6, poll_interval=0.01, worker_id="one")
    two = ActionWorkers(
        other_queue, other_results, concurrency=6, poll_interval=0.01, worker_id="two"
    )
    try:
        async with running(one), running(two):
            await wait_for(lambda: _settled(results, succeeded=150), 60, lambda: statuses(results))
    finally:
        await other_queue.close()
        await other_results.close()
    assert not overlaps, overlaps[:5]
    assert len(runs) == 150 and set(runs.values()) == {1}, Counter(runs.values())
    assert one.counts["succeeded"] > 0 and two.counts["succeeded"] > 0, (one.counts, two.counts)
    assert one.counts["succeeded"] + two.counts["succeeded"] == 150


async def test_a_compensation_that_ran_marks_the_original_compensated(
    queue: JobQueue, results: ActionResults, action: Any
) -> None:
    spec = ActionSpec(action("undo", lambda ctx: {"undone": ctx.compensation}), {})
    event = Event(type="workers.test.event")
    original = Job.for_event(event, "wt", 0, spec, position=1)
    await results.record(original.key, event_id=event.id, trigger_id="wt", action_index=0,
                         action_type=spec.type, status="succeeded", attempts=1)  # fmt: skip
    assert await results.invalidate_for_events([event.id]) == [original.key]
    comp = Job.for_event(event, "wt", 0, spec, position=1, compensation=True)
    await queue.enqueue([comp])
    async with running(ActionWorkers(queue, results, poll_interval=0.02)):
        await wait_for(lambda: _settled(results, succeeded=1), 30, lambda: statuses(results))
    assert (await results.get(original.key)).status == "compensated"  # type: ignore[union-attr]
    done = await results.get(comp.key)
    assert done is not None and done.output == {"undone": True}


async def test_stop_drains_then_hands_back_what_did_not_finish(
    queue: JobQueue, results: ActionResults, action: Any
) -> None:
    started = asyncio.Event()

    async def slow(ctx: ActionContext) -> None:
        started.set()
        await asyncio.sleep(30)

    jobs = make_jobs(action("slow", slow), 1)
    await queue.enqueue(jobs)
    workers = ActionWorkers(queue, results, timeout=60, drain_timeout=0.2, poll_interval=0.02)
    task = asyncio.create_task(workers.run_until_stopped())
    await asyncio.wait_for(started.wait(), 30)
    assert await workers.stop() == [jobs[0].key]
    await task
    assert await queue.state(jobs[0].key) == "pending"
    (again,) = await queue.claim("w", 5, 30)
    assert again.attempts == 1  # the unfinished attempt was not counted
    assert await results.get(jobs[0].key) is None


# ---------------------------------------------------------------------- kill -9

CHILD = r"""
import asyncio, json, sys
from pathlib import Path
from tidings.triggers.actions import register_action
from tidings.triggers.jobs import open_job_queue
from tidings.triggers.results import ActionResults
from tidings.triggers.workers import ActionWorkers

queue_name, store_url, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])

def note(**fields):
    with marker.open("a") as f:
        f.write(json.dumps(fields) + "\n")

async def act(ctx):
    note(key=ctx.key, attempt=ctx.attempt)
    if ctx.event.data["i"] % 2 == 0:
        await asyncio.sleep(3600)  # holding the claim until SIGKILL
    return {"by": "child"}

async def main():
    register_action("workers.test.kill", act)
    queue = open_job_queue(queue_name, store_url)

    async def stuck(jobs):  # the results are written; the process dies before the queue hears
        note(stuck=[j.key for j in jobs])
        await asyncio.sleep(3600)

    queue.complete_many = stuck
    results = ActionResults(store_url)
    workers = ActionWorkers(queue, results, concurrency=10, timeout=1.0, lease_seconds=1.5,
                            poll_interval=0.02, worker_id="doomed")
    await workers.run_until_stopped()

asyncio.run(main())
"""


async def _count_by(results: ActionResults, by: str, n: int) -> bool:
    rows = await results.list(limit=1000)
    return len([r for r in rows if r.output and r.output.get("by") == by]) >= n


async def test_a_sigkilled_worker_s_jobs_run_again_after_the_lease(
    queue: JobQueue, queue_url: tuple[str, str], results: ActionResults, tmp_path: Path, action: Any
) -> None:
    """The child claims five jobs: it runs the odd ones and records their results, then dies
    before telling the queue (stuck in complete); the even ones it holds mid-action. SIGKILL;
    after the lease every job runs again here, and each key still has one result row."""
    marker = tmp_path / "held.jsonl"
    jobs = make_jobs("workers.test.kill", 5)
    await queue.enqueue(jobs)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *queue_url, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def notes() -> list[dict[str, Any]]:
        if not marker.exists():
            return []
        return [json.loads(line) for line in marker.read_text().splitlines()]

    def ready() -> bool:
        seen = notes()
        return len([n for n in seen if "key" in n]) == 5 and any("stuck" in n for n in seen)

    try:
        await wait_for(ready, 30, lambda: (notes(), child.poll()))
        assert {n["key"] for n in notes() if "key" in n} == {j.key for j in jobs}
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == -signal.SIGKILL, child.stdout.read() if child.stdout else ""
    assert {await queue.state(j.key) for j in jobs} == {"running"}  # claims held by the dead
    by_child = await results.list(limit=100)
    assert sorted(r.key for r in by_child) == sorted(j.key for j in jobs[1::2])
    assert {(r.status, r.attempts, (r.output or {}).get("by")) for r in by_child} == {
        ("succeeded", 1, "child")
    }

    ran: Counter[str] = Counter()

    def finish(ctx: ActionContext) -> dict[str, Any]:
        ran[ctx.key] += 1
        return {"by": "parent", "attempt": ctx.attempt}

    action("kill", finish)
    workers = ActionWorkers(queue, results, concurrency=10, poll_interval=0.05)
    async with running(workers):
        await wait_for(lambda: _count_by(results, "parent", 5), 30, lambda: results.list(limit=100))
    assert dict(ran) == {j.key: 1 for j in jobs}
    rows = await results.list(limit=100)
    assert sorted(r.key for r in rows) == sorted(j.key for j in jobs)  # one row per key
    assert {(r.status, r.attempts, (r.output or {}).get("by")) for r in rows} == {
        ("succeeded", 2, "parent")
    }
    assert await queue.depth() == 0
    assert {await queue.state(j.key) for j in jobs} == {"done"}


async def test_a_queue_that_is_down_is_logged_and_stop_still_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("redis")
    from tidings.triggers.jobs.redis import RedisJobQueue  # noqa: PLC0415

    queue = RedisJobQueue("redis://127.0.0.1:1/0?prefix=tidings-test-down")  # nothing listens
    results = ActionResults(f"sqlite:///{tmp_path / 'events.db'}")
    workers = ActionWorkers(queue, results, poll_interval=0.02)
    try:
        with caplog.at_level(logging.ERROR, logger="tidings.triggers.workers"):
            task = asyncio.create_task(workers.run_until_stopped())
            await wait_for(
                lambda: any("claiming failed" in r.getMessage() for r in caplog.records),
                30,
                lambda: [r.getMessage() for r in caplog.records],
            )
            assert not task.done()
            assert await asyncio.wait_for(workers.stop(), 10) == []
            await task
    finally:
        await queue.close()
        await results.close()


async def test_an_enqueue_in_the_same_process_wakes_idle_workers(
    queue: JobQueue, results: ActionResults, action: Any
) -> None:
    started: list[float] = []

    def note(ctx: ActionContext) -> None:
        started.append(time.monotonic())

    jobs = make_jobs(action("wake", note), 1)
    workers = ActionWorkers(queue, results, poll_interval=10.0)  # would poll only every 10 s
    async with running(workers):
        await asyncio.sleep(0.2)  # idle, waiting
        enqueued = time.monotonic()
        await queue.enqueue(jobs)
        await wait_for(lambda: bool(started), 30, lambda: workers.counts)
    assert started[0] - enqueued < 2.0, started[0] - enqueued
