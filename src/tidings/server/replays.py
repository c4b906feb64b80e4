"""Replay jobs: ``POST /replays`` starts one, ``GET /replays/{id}`` shows its progress.

A replay of many events outlasts an HTTP request, so the request only checks the input and
starts a job (``202`` with the job's URL); the job pages through the store in a thread, writing
deliveries as the queue has room (like ``tidings replay``: it waits while the queue is full
rather than refusing), and counts what it has read against the events that match. Jobs are kept
in memory, the newest ``KEEP`` of them: the deliveries they wrote are durable, the job record
is a progress report, and it is gone after a restart (the replay stops there; what was written
stays queued).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uuid_utils
from starlette.requests import Request
from starlette.responses import Response

from tidings.server.body import ApiError
from tidings.server.cursors import page_next, page_start
from tidings.server.jsonio import json_object, reply, rfc3339
from tidings.server.operations import query
from tidings.server.params import parse_time
from tidings.server.service import Service
from tidings.store.base import Criteria
from tidings.topics import PatternError
from tidings.webhooks.queue import replay_bound

__all__ = ["Job", "Replays", "replay_criteria"]

KEEP = 100  # finished jobs remembered
POLL = 0.5  # seconds between looks for room in a full queue


@dataclass
class Job:
    id: str
    criteria: Criteria
    since: str
    until: str | None
    types: list[str]
    created_at: float = field(default_factory=time.time)
    state: str = "running"
    events_total: int = 0
    events_read: int = 0
    deliveries: int = 0
    error: str | None = None
    finished_at: float | None = None

    def view(self) -> dict[str, Any]:
        total = self.events_total
        return {
            "id": self.id,
            "state": self.state,
            "since": self.since,
            "until": self.until,
            "types": self.types,
            "events_total": total,
            "events_read": self.events_read,
            "deliveries": self.deliveries,
            "progress": 1.0
            if self.state == "done"
            else min(1.0, self.events_read / total)
            if total
            else 0.0,
            "error": self.error,
            "created_at": rfc3339(self.created_at),
            "finished_at": rfc3339(self.finished_at),
            "url": f"/replays/{self.id}",
        }


def replay_criteria(data: dict[str, Any]) -> tuple[Criteria, list[str]]:
    """``since``, ``until`` and ``types`` of a replay body, checked, as store criteria."""
    since = parse_time(data.get("since"), "since")
    if since is None:
        raise ApiError(400, "since: required, e.g. 2026-01-15T00:00:00Z", "since")
    until = parse_time(data.get("until"), "until")
    types = data.get("types")
    if types is not None and (
        not isinstance(types, list) or not all(isinstance(t, str) for t in types)
    ):
        raise ApiError(400, "types: expected a list of event type patterns", "types")
    try:
        criteria = Criteria(types=tuple(types or ()), since=since, until=until)
    except PatternError as exc:
        raise ApiError(400, f"types: {exc}", "types") from None
    return criteria, list(types or ())


class Replays:
    """The jobs of one server, and their routes."""

    def __init__(self, service: Service, limit: int) -> None:
        self.service = service
        self.limit = limit
        self.jobs: dict[str, Job] = {}
        self._stop = threading.Event()
        self._tasks: set[asyncio.Future[None]] = set()

    async def create(self, request: Request) -> Response:
        data = await json_object(request, self.limit)
        unknown = sorted(set(data) - {"since", "until", "types"})
        if unknown:
            raise ApiError(
                400, f"{unknown[0]}: unknown field; expected since, until, types", unknown[0]
            )
        criteria, types = replay_criteria(data)
        job = Job(
            f"rp_{uuid_utils.uuid7().hex}",
            criteria,
            rfc3339(criteria.since.timestamp()) or "",  # type: ignore[union-attr]
            rfc3339(criteria.until.timestamp()) if criteria.until else None,
            types,
        )
        self.jobs[job.id] = job
        self._forget_old()
        task = asyncio.ensure_future(asyncio.to_thread(self._run, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return reply(job.view(), 202, headers={"Location": f"/replays/{job.id}"})

    def _forget_old(self) -> None:
        done = [j for j in self.jobs.values() if j.state != "running"]
        for job in done[: max(0, len(done) - KEEP)]:
            del self.jobs[job.id]

    def _run(self, job: Job) -> None:
        service = self.service
        try:
            job.events_total = service.store.count(job.criteria)  # type: ignore[attr-defined]
            bound = replay_bound(service.settings.events.queue_size)

            def wait(open_now: int, most: int) -> bool:
                return not self._stop.wait(POLL)

            def progress(read: int) -> None:
                job.events_read = read

            job.deliveries = service.queue.redeliver(
                job.criteria,
                service.router,
                progress=progress,
                batch=max(1, min(1000, bound // 4)),
                max_pending=bound,
                wait=wait,
            )
            job.state = "done"
            service.worker.wake()
        except Exception as exc:
            job.state, job.error = "failed", str(exc)
        finally:
            job.finished_at = time.time()

    async def get(self, request: Request) -> Response:
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            raise ApiError(
                404, f"no replay {request.path_params['id']!r} (jobs are kept in memory)"
            )
        return reply(job.view())

    async def list(self, request: Request) -> Response:
        q = query(request)
        limit = q.limit()
        after = page_start(request)
        jobs = sorted(self.jobs.values(), key=lambda j: j.id, reverse=True)
        if isinstance(after, str):
            jobs = [j for j in jobs if j.id < after]
        page = jobs[:limit]
        more = len(jobs) > limit
        return reply(
            {
                "replays": [j.view() for j in page],
                "next_cursor": page_next(request, more, page[-1].id if page else None),
            }
        )

    async def stop(self) -> None:
        """Ask running jobs to stop waiting for room, and wait for them a little."""
        self._stop.set()
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(self._tasks, timeout=5)
