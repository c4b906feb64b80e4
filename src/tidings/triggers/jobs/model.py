"""A job (one action of one trigger for one event), its key, its JSON form, and the queue protocol.

The key ``{event_id}:{trigger_id}:{action_index}`` (``:compensate`` for a compensation job) is
the job's identity everywhere: the queue ignores a key it has seen before, whatever became of
it, so a replayed or redelivered event never enqueues the same action twice; the results keep
one row per key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import msgspec

from tidings.event import Event, decode, encode
from tidings.triggers.definitions import ActionSpec

__all__ = [
    "JOB_STATES",
    "Job",
    "JobQueue",
    "action_from_json",
    "action_to_json",
    "as_job",
    "job_key",
]

# pending: waiting (new, or a retry waiting for its time); running: claimed under a lease;
# done: succeeded; dead: failed its last attempt (the DLQ); cancelled: a reorg withdrew it.
JOB_STATES = ("pending", "running", "done", "dead", "cancelled")


def job_key(event_id: str, trigger_id: str, action_index: int, compensation: bool = False) -> str:
    """The idempotency key of one action of one trigger for one event."""
    key = f"{event_id}:{trigger_id}:{action_index}"
    return f"{key}:compensate" if compensation else key


def action_to_json(spec: ActionSpec) -> str:
    """An ActionSpec as JSON text (its options must be JSON values, as YAML and the API give)."""
    try:
        return msgspec.json.encode(
            {"type": spec.type, "options": dict(spec.options), "name": spec.name}
        ).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValueError(
            f"action {spec.type!r}: its options must be JSON values (strings, numbers, booleans, "
            f"null, lists, mappings): {exc}"
        ) from exc


def action_from_json(raw: str | bytes) -> ActionSpec:
    data = msgspec.json.decode(raw)
    return ActionSpec(type=data["type"], options=data.get("options") or {}, name=data.get("name"))


@dataclass(slots=True)
class Job:
    """One action to run. ``attempts`` counts the attempts started, this one included once
    claimed; ``token`` is the lease token of the claim that returned it (complete and fail
    change the job only while it still holds that lease); ``error`` is the last error."""

    key: str
    event_id: str
    trigger_id: str
    action_index: int
    action: ActionSpec
    event: Event
    partition: str | None = None
    compensation: bool = False
    attempts: int = 0
    position: int | None = None
    token: str | None = None
    error: str | None = None

    @classmethod
    def for_event(
        cls,
        event: Event,
        trigger_id: str,
        action_index: int,
        action: ActionSpec,
        *,
        position: int | None = None,
        partition: str | None = None,
        compensation: bool = False,
    ) -> Job:
        """The job of ``action`` (index ``action_index`` of trigger ``trigger_id``) for
        ``event``, keyed as the module docstring says."""
        return cls(
            key=job_key(event.id, trigger_id, action_index, compensation),
            event_id=event.id,
            trigger_id=trigger_id,
            action_index=action_index,
            action=action,
            event=event,
            partition=partition,
            compensation=compensation,
            position=position,
        )

    def body(self) -> dict[str, Any]:
        """What a queue stores besides the key (JSON-safe; the event as its JSON text)."""
        return {
            "event_id": self.event_id,
            "trigger_id": self.trigger_id,
            "action_index": self.action_index,
            "compensation": self.compensation,
            "partition": self.partition,
            "position": self.position,
            "action": action_to_json(self.action),
            "event": encode(self.event).decode(),
        }

    @classmethod
    def from_body(
        cls,
        key: str,
        body: Mapping[str, Any],
        *,
        attempts: int = 0,
        token: str | None = None,
        error: str | None = None,
    ) -> Job:
        return cls(
            key=key,
            event_id=body["event_id"],
            trigger_id=body["trigger_id"],
            action_index=int(body["action_index"]),
            action=action_from_json(body["action"]),
            event=decode(body["event"]),
            partition=body.get("partition"),
            compensation=bool(body.get("compensation")),
            attempts=attempts,
            position=body.get("position"),
            token=token,
            error=error,
        )

    def with_lease(self, attempts: int, token: str) -> Job:
        return replace(self, attempts=attempts, token=token)


_JOB_FIELDS = ("key", "event_id", "trigger_id", "action_index", "action", "event")


def as_job(obj: Any) -> Job:
    """``obj`` as a Job: a Job itself, or any object with a Job's attributes (the shape the
    triggers contract gives, e.g. the reorg recovery's compensation jobs)."""
    if isinstance(obj, Job):
        job = obj
    else:
        missing = [name for name in _JOB_FIELDS if not hasattr(obj, name)]
        if missing:
            raise TypeError(
                f"enqueue(): expected Jobs, got {type(obj).__name__} (no {', '.join(missing)}); "
                "build them with Job.for_event(...)"
            )
        job = Job(
            key=obj.key,
            event_id=obj.event_id,
            trigger_id=obj.trigger_id,
            action_index=obj.action_index,
            action=obj.action,
            event=obj.event,
            partition=getattr(obj, "partition", None),
            compensation=bool(getattr(obj, "compensation", False)),
            attempts=int(getattr(obj, "attempts", 0) or 0),
            position=getattr(obj, "position", None),
        )
    problems = [
        f"{name}: expected {kind.__name__}, got {type(getattr(job, name)).__name__}"
        for name, kind in (
            ("key", str), ("event_id", str), ("trigger_id", str), ("action_index", int),
            ("action", ActionSpec), ("event", Event),
        )
        if not isinstance(getattr(job, name), kind)
    ]  # fmt: skip
    if problems:
        raise TypeError(f"enqueue(): job {job.key!r}: {'; '.join(problems)}")
    return job


@runtime_checkable
class JobQueue(Protocol):
    """Where matched actions wait for a worker: the store's database or Redis.

    ``enqueue`` returns how many jobs were new: a key seen before (queued, running, done,
    cancelled or dead) is ignored. ``claim`` leases up to ``limit`` due jobs to ``worker_id``
    for ``lease_seconds``; a job whose lease runs out (its worker died) is due again.
    ``counts["enqueued"]`` and ``counts["duplicates"]`` (keys offered again and ignored) count
    enqueues in this process. ``fail(job, error, retry_at)``: due again at ``retry_at`` (epoch
    seconds), or dead (the DLQ) when ``retry_at`` is None. ``cancel_for_events`` cancels
    pending jobs only.
    """

    counts: Counter[str]

    async def enqueue(self, jobs: Sequence[Job]) -> int: ...

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[Job]: ...

    async def complete(self, job: Job, output: Mapping[str, Any] | None = None) -> bool: ...

    async def complete_many(self, jobs: Sequence[Job]) -> int: ...

    async def fail(self, job: Job, error: str, retry_at: float | None) -> bool: ...

    async def fail_many(self, failures: Sequence[tuple[Job, str, float | None]]) -> int: ...

    async def release(self, jobs: Sequence[Job]) -> int: ...

    async def cancel_for_events(self, event_ids: Sequence[str]) -> int: ...

    async def state(self, key: str) -> str | None: ...

    async def depth(self) -> int: ...

    async def dead(self, limit: int = 100) -> list[Job]: ...

    async def retry_dead(self, key: str | None = None) -> int: ...

    async def close(self) -> None: ...
