"""ActionWorkers: run the queue's jobs, retry them by policy, record every outcome.

One loop claims due jobs in batches (up to ``concurrency`` in flight), runs each as a task
bounded by ``timeout`` per attempt, and writes the outcomes of whatever finished in one batch:
the results first (``action_results``, one row per key), then the jobs' new states. A failed
attempt is due again after the RetryPolicy's delay while retries remain, else dead (the DLQ)
with its error; ``PermanentActionError`` (and options the action refuses) goes dead at once.

At-least-once: a worker that dies mid-job loses its lease when it runs out and another worker
runs the job again; the lease is longer than the timeout, so a job is never run by two live
workers at once. A second run writes the same result row (same key), and the built-in actions
derive their side effects' ids from the key (one webhook delivery, one published event, one
Message-ID). ``stop()`` stops claiming, lets the jobs in flight finish within ``drain_timeout``,
and hands the rest back unattempted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from tidings.event import Event, new_id
from tidings.retry import RetryPolicy
from tidings.triggers.actions.base import (
    ActionContext,
    PermanentActionError,
    WebhookEnqueue,
)
from tidings.triggers.actions.registry import build_action
from tidings.triggers.jobs.model import Job, JobQueue
from tidings.triggers.results import ActionResult, ActionResults

__all__ = ["ActionWorkers", "ContextFactory", "context_factory"]

log = logging.getLogger("tidings.triggers.workers")

ContextFactory = Callable[[Job], ActionContext]
_COMPENSATE = ":compensate"


def context_factory(
    *,
    publish: Callable[[Event], Awaitable[Any]] | None = None,
    webhooks: WebhookEnqueue | None = None,
) -> ContextFactory:
    """The usual ``context_factory``: every job's context gets the same ways out."""

    def make(job: Job) -> ActionContext:
        return ActionContext(
            event=job.event,
            trigger_id=job.trigger_id,
            action_index=job.action_index,
            spec=job.action,
            key=job.key,
            compensation=job.compensation,
            attempt=job.attempts,
            publish=publish,
            webhooks=webhooks,
            position=job.position,
        )

    return make


_default_context = context_factory


@dataclass(slots=True)
class _Outcome:
    job: Job
    status: str  # succeeded | failed | dead
    output: dict[str, Any] | None
    error: str | None
    duration_ms: float
    retry_at: float | None = None


def _json_output(value: Any) -> dict[str, Any] | None:
    """What an action returned, as the JSON mapping to record (never an error: it ran)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        try:
            out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(dict(value)))
            return out
        except (TypeError, msgspec.EncodeError):
            return {"repr": repr(value)[:2000]}
    try:
        return {"value": msgspec.json.decode(msgspec.json.encode(value))}
    except (TypeError, msgspec.EncodeError):
        return {"repr": repr(value)[:2000]}


class ActionWorkers:
    """Workers over ``queue`` recording into ``results``; see the module docstring.

    ``lease_seconds`` (default ``timeout + 30``) must exceed ``timeout``. ``poll_interval``:
    how long an idle loop waits before looking for due jobs again; ``wake()`` cuts the wait
    short, and a queue with ``on_enqueue`` (both of tidings') calls it after every enqueue
    through that queue object, so jobs of a processor in the same process start at once.
    """

    def __init__(
        self,
        queue: JobQueue,
        results: ActionResults,
        *,
        retry: RetryPolicy | None = None,
        concurrency: int = 10,
        context_factory: ContextFactory | None = None,
        timeout: float = 30.0,
        lease_seconds: float | None = None,
        worker_id: str | None = None,
        poll_interval: float = 0.1,
        drain_timeout: float = 10.0,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(
                f"ActionWorkers(concurrency=): expected an int >= 1, got {concurrency!r}"
            )
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError(f"ActionWorkers(timeout=): expected seconds > 0, got {timeout!r}")
        lease = float(lease_seconds) if lease_seconds is not None else float(timeout) + 30.0
        if lease <= timeout:
            raise ValueError(
                f"ActionWorkers(lease_seconds=): {lease}s must exceed the timeout ({timeout}s), "
                "or a slow job could be taken over while it still runs"
            )
        self.queue = queue
        self.results = results
        self.retry = retry if retry is not None else RetryPolicy()
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.lease_seconds = lease
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self.poll_interval = poll_interval
        self.drain_timeout = drain_timeout
        self._context = context_factory if context_factory is not None else _default_context()
        self.counts: Counter[str] = Counter()  # succeeded, retried, dead, lost, released
        self._outcomes: list[_Outcome] = []
        self._running: dict[asyncio.Task[None], Job] = {}
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._stopped = asyncio.Event()
        self._active = False
        self._loop_of_run: asyncio.AbstractEventLoop | None = None
        self.unfinished: list[str] = []  # keys handed back by the last stop
        hook = getattr(queue, "on_enqueue", None)
        if callable(hook):
            hook(self.wake)  # jobs enqueued through this queue object start at once

    # ------------------------------------------------------------------ control

    def wake(self) -> None:
        """Look for due jobs now (new ones were enqueued); callable from any thread."""
        loop = self._loop_of_run
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if loop is None or current is loop:
            self._wakeup.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wakeup.set)

    async def stop(self) -> list[str]:
        """Stop claiming, drain (``drain_timeout``), hand back the rest; returns their keys."""
        self._stopping.set()
        self._wakeup.set()
        if self._active:
            await self._stopped.wait()
        return list(self.unfinished)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run_until_stopped(self) -> None:
        """Claim and run jobs until ``stop()``."""
        if self._active:
            raise RuntimeError("ActionWorkers.run_until_stopped() is running already")
        self._active = True
        self._loop_of_run = asyncio.get_running_loop()
        self._stopped.clear()
        try:
            await self._loop()
        finally:
            await self._drain()
            self._active = False
            self._stopped.set()

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wakeup.clear()  # before the claim: a wake during it is not lost
            free = self.concurrency - len(self._running)
            claimed: list[Job] = []
            if free > 0:
                try:
                    claimed = await self.queue.claim(self.worker_id, free, self.lease_seconds)
                    failures = 0
                except Exception as exc:  # the queue is down: say so, back off, go on
                    failures += 1
                    log.error("action workers: claiming failed (%s); retrying", exc)
                    await self._sleep(min(5.0, self.poll_interval * 2**failures))
                    continue
            for job in claimed:
                task = asyncio.create_task(self._attempt(job), name=f"action {job.key}")
                self._running[task] = job
            await self._flush()
            if len(claimed) == free and free > 0:
                continue  # a full batch: there may be more due at once
            await self._wait()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _wait(self) -> None:
        """Until a job finishes, new work is announced, stop() is called, or the poll
        interval has passed."""
        if self._stopping.is_set() or self._wakeup.is_set():
            return
        wake = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait(
                {*self._running, wake},
                timeout=self.poll_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            wake.cancel()
        self._reap()

    def _reap(self) -> None:
        for task in [t for t in self._running if t.done()]:
            del self._running[task]

    async def _drain(self) -> None:
        self.unfinished = []
        if self._running:
            await asyncio.wait(set(self._running), timeout=self.drain_timeout)
        left = [job for task, job in self._running.items() if not task.done()]
        for task in list(self._running):
            if not task.done():
                task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._running.clear()
        await self._flush()
        if left:
            self.unfinished = [job.key for job in left]
            try:
                self.counts["released"] += await self.queue.release(left)
            except Exception as exc:
                log.error("action workers: could not hand back %d jobs (%s); their leases "
                          "run out and others take them", len(left), exc)  # fmt: skip
            log.warning("action workers stopped with %d jobs unfinished: %s", len(left),
                        ", ".join(self.unfinished[:10]))  # fmt: skip

    # ------------------------------------------------------------------ one attempt

    async def _attempt(self, job: Job) -> None:
        started = time.perf_counter()
        try:
            action = build_action(job.action)
            ctx = self._context(job)
        except Exception as exc:  # unknown type, refused options: no retry can mend them
            self._done(job, "dead", None, f"{type(exc).__name__}: {exc}", started)
            return
        try:
            output = await asyncio.wait_for(action.run(ctx), self.timeout)
        except PermanentActionError as exc:
            self._done(job, "dead", None, str(exc), started)
        except TimeoutError as exc:
            error = f"timed out after {self.timeout:g}s (attempt {job.attempts})"
            self._failed(job, exc, error, started)
        except Exception as exc:
            self._failed(job, exc, f"{type(exc).__name__}: {exc}", started)
        else:
            self._done(job, "succeeded", _json_output(output), None, started)

    def _failed(self, job: Job, exc: BaseException, error: str, started: float) -> None:
        attempts = max(job.attempts, 1)
        if self.retry.should_retry(attempts, exc):
            retry_at = time.time() + self.retry.delay(attempts)
            self._done(job, "failed", None, error, started, retry_at)
        else:
            self._done(job, "dead", None, error, started)

    def _done(
        self,
        job: Job,
        status: str,
        output: dict[str, Any] | None,
        error: str | None,
        started: float,
        retry_at: float | None = None,
    ) -> None:
        duration = (time.perf_counter() - started) * 1000.0
        self._outcomes.append(_Outcome(job, status, output, error, duration, retry_at))
        if status == "failed":
            log.warning("action %s failed (attempt %d), retrying: %s", job.key, job.attempts,
                        error)  # fmt: skip
        elif status == "dead":
            log.error("action %s is dead after %d attempt(s): %s", job.key, job.attempts, error)

    # ------------------------------------------------------------------ writing outcomes

    async def _flush(self) -> None:
        self._reap()
        if not self._outcomes:
            return
        batch, self._outcomes = self._outcomes, []
        rows = [
            ActionResult(
                key=o.job.key,
                event_id=o.job.event_id,
                trigger_id=o.job.trigger_id,
                action_index=o.job.action_index,
                action_type=o.job.action.type,
                status=o.status,
                output=o.output,
                error=o.error,
                duration_ms=round(o.duration_ms, 3),
                attempts=o.job.attempts,
            )
            for o in batch
        ]
        ok = [o.job for o in batch if o.status == "succeeded"]
        failures = [(o.job, o.error or "", o.retry_at) for o in batch if o.status != "succeeded"]
        try:
            await self.results.record_many(rows)
            changed = await self.queue.complete_many(ok) if ok else 0
            changed += await self.queue.fail_many(failures) if failures else 0
            compensated = [j.key.removesuffix(_COMPENSATE) for j in ok if j.compensation]
            if compensated:
                await self.results.mark_compensated(compensated)
        except Exception as exc:  # the database is down: keep them and try again
            log.error("action workers: recording %d outcomes failed (%s); retrying", len(batch),
                      exc)  # fmt: skip
            self._outcomes = batch + self._outcomes
            await self._sleep(self.poll_interval)
            return
        for o in batch:
            self.counts["retried" if o.status == "failed" else o.status] += 1
        self.counts["lost"] += len(batch) - changed
        if changed < len(batch):
            log.warning("action workers: %d of %d jobs had lost their lease (another worker "
                        "took them over)", len(batch) - changed, len(batch))  # fmt: skip
