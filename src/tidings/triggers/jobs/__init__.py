"""The action job queue: ``Job``, the ``JobQueue`` protocol, and its two homes.

``open_job_queue("store", store_url)`` keeps the jobs in the store's own database (the embedded
default: ``SqlJobQueue`` on SQLite or PostgreSQL); ``open_job_queue("redis://...", store_url)``
keeps them in Redis, as seed 001 does (``RedisJobQueue``). Either way the results go to the
store's database (``tidings.triggers.results``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tidings.triggers.jobs.model import (
    JOB_STATES,
    Job,
    JobQueue,
    action_from_json,
    action_to_json,
    as_job,
    job_key,
)
from tidings.triggers.jobs.sql import SqlJobQueue
from tidings.urls import redact_url

__all__ = [
    "JOB_STATES",
    "Job",
    "JobQueue",
    "SqlJobQueue",
    "action_from_json",
    "action_to_json",
    "as_job",
    "job_key",
    "open_job_queue",
]


def open_job_queue(queue: str, store_url: str) -> JobQueue:
    """The job queue ``queue`` names: ``"store"`` (the store's database at ``store_url``) or a
    ``redis://`` / ``rediss://`` URL. A ValueError says what else would do."""
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"processor.queue: expected 'store' or a redis:// URL, got {queue!r}")
    if queue == "store":
        return SqlJobQueue(store_url)
    if urlsplit(queue).scheme in ("redis", "rediss", "unix"):
        from tidings.triggers.jobs.redis import RedisJobQueue  # noqa: PLC0415 - optional extra

        return RedisJobQueue(queue)
    raise ValueError(
        f"processor.queue: expected 'store' (the store's own database) or a redis:// URL, got "
        f"{redact_url(queue)!r}"
    )
