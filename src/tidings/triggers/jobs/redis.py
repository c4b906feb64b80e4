"""RedisJobQueue: the action jobs in Redis, as seed 001 has them (``redis://host:port/db``).

Every key shares the hash tag ``{prefix}`` (one slot, so the Lua scripts also run on a
cluster):

- ``{p}:state`` hash key -> state: the idempotency (``HSETNX``; kept for every key ever seen);
- ``{p}:body`` hash key -> the job as JSON (dropped when done or cancelled, kept when dead);
- ``{p}:ready`` sorted set of pending keys by due time; ``{p}:running`` of claimed keys by
  lease end (the visibility timeout); ``{p}:dead`` of dead keys by time of death (the DLQ);
- ``{p}:token``, ``{p}:attempts``, ``{p}:error`` hashes: the lease token, the attempts
  started and the last error of each key.

Each operation on a batch is one Lua script, so it is atomic: two workers never claim one
job, and a worker whose lease ran out (it died, or stalled) cannot complete or fail a job that
another worker holds now. ``?prefix=`` in the URL names the queue (default ``tidings:jobs``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from tidings.event import new_id
from tidings.triggers.jobs.model import Job, as_job
from tidings.urls import redact_url

__all__ = ["RedisJobQueue"]

_BATCH = 2000  # jobs per script call (scripts block Redis while they run)

# KEYS: state, body, ready; ARGV: now, then key, body per job.
_ENQUEUE = """
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], 'pending') == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[3], ARGV[1], ARGV[i])
    n = n + 1
  end
end
return n
"""

# KEYS: state, body, ready, running, token, attempts, error
# ARGV: now, limit, lease until, token
_CLAIM = """
local picked = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
local rest = tonumber(ARGV[2]) - #picked
if rest > 0 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, rest)
  for _, k in ipairs(due) do
    redis.call('ZREM', KEYS[3], k)
    table.insert(picked, k)
  end
end
local out = {}
for _, k in ipairs(picked) do
  redis.call('ZADD', KEYS[4], ARGV[3], k)
  redis.call('HSET', KEYS[5], k, ARGV[4])
  redis.call('HSET', KEYS[1], k, 'running')
  local attempts = redis.call('HINCRBY', KEYS[6], k, 1)
  local body = redis.call('HGET', KEYS[2], k)
  local err = redis.call('HGET', KEYS[7], k)
  table.insert(out, {k, body or '', attempts, err or ''})
end
return out
"""

# KEYS: state, body, ready, running, token, attempts, error; ARGV: key, token per job
_COMPLETE = """
local n = 0
for i = 1, #ARGV, 2 do
  local k = ARGV[i]
  if redis.call('HGET', KEYS[5], k) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[4], k)
    redis.call('HDEL', KEYS[5], k)
    redis.call('HDEL', KEYS[2], k)
    redis.call('HDEL', KEYS[6], k)
    redis.call('HDEL', KEYS[7], k)
    redis.call('HSET', KEYS[1], k, 'done')
    n = n + 1
  end
end
return n
"""

# KEYS: state, body, ready, running, token, attempts, error, dead
# ARGV: now, then key, token, retry_at ('' = dead), error per job
_FAIL = """
local n = 0
for i = 2, #ARGV, 4 do
  local k = ARGV[i]
  if redis.call('HGET', KEYS[5], k) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[4], k)
    redis.call('HDEL', KEYS[5], k)
    redis.call('HSET', KEYS[7], k, ARGV[i + 3])
    if ARGV[i + 2] == '' then
      redis.call('HSET', KEYS[1], k, 'dead')
      redis.call('ZADD', KEYS[8], ARGV[1], k)
    else
      redis.call('HSET', KEYS[1], k, 'pending')
      redis.call('ZADD', KEYS[3], ARGV[i + 2], k)
    end
    n = n + 1
  end
end
return n
"""

# KEYS: state, body, ready, running, token, attempts; ARGV: now, then key, token per job
_RELEASE = """
local n = 0
for i = 2, #ARGV, 2 do
  local k = ARGV[i]
  if redis.call('HGET', KEYS[5], k) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[4], k)
    redis.call('HDEL', KEYS[5], k)
    redis.call('HSET', KEYS[1], k, 'pending')
    if tonumber(redis.call('HGET', KEYS[6], k) or '0') > 0 then
      redis.call('HINCRBY', KEYS[6], k, -1)
    end
    redis.call('ZADD', KEYS[3], ARGV[1], k)
    n = n + 1
  end
end
return n
"""

# KEYS: state, body, ready, attempts, error; ARGV: keys (pending ones are cancelled)
_CANCEL = """
local n = 0
for _, k in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[3], k) == 1 then
    redis.call('HSET', KEYS[1], k, 'cancelled')
    redis.call('HDEL', KEYS[2], k)
    redis.call('HDEL', KEYS[4], k)
    redis.call('HDEL', KEYS[5], k)
    n = n + 1
  end
end
return n
"""

# KEYS: state, ready, attempts, dead; ARGV: now, then the keys to retry ('*' = every dead key)
_RETRY_DEAD = """
local keys = {}
if ARGV[2] == '*' then
  keys = redis.call('ZRANGE', KEYS[4], 0, -1)
else
  for i = 2, #ARGV do table.insert(keys, ARGV[i]) end
end
local n = 0
for _, k in ipairs(keys) do
  if redis.call('ZREM', KEYS[4], k) == 1 then
    redis.call('HSET', KEYS[1], k, 'pending')
    redis.call('HDEL', KEYS[3], k)
    redis.call('ZADD', KEYS[2], ARGV[1], k)
    n = n + 1
  end
end
return n
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisJobQueue:
    """The job queue in Redis at ``url`` (``redis://host:6379/0?prefix=tidings:jobs``)."""

    def __init__(self, url: str, *, prefix: str | None = None) -> None:
        try:
            import redis.asyncio as aioredis  # noqa: PLC0415 - the optional "redis" extra
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ImportError(
                "the Redis job queue needs redis-py: pip install 'tidings[redis]'"
            ) from exc
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"RedisJobQueue: expected a redis://, rediss:// or unix:// URL, got "
                f"{redact_url(url)!r}"
            )
        query = dict(parse_qsl(parts.query))
        given = query.pop("prefix", None)
        prefix = prefix or given or "tidings:jobs"
        if not prefix or any(c in prefix for c in "{} \r\n"):
            raise ValueError(
                f"RedisJobQueue: prefix {prefix!r}: expected a non-empty name without braces, "
                "spaces or line breaks"
            )
        self.url = url
        self.prefix = prefix
        self.counts: Counter[str] = Counter()  # enqueued (new), duplicates (keys seen before)
        self._listeners: list[Callable[[], None]] = []
        client_url = urlunsplit(parts._replace(query=urlencode(query)))
        self._redis: Any = aioredis.from_url(client_url, decode_responses=False)
        tag = "{" + prefix + "}"
        k = {name: f"{tag}:{name}" for name in (
            "state", "body", "ready", "running", "token", "attempts", "error", "dead",
        )}  # fmt: skip
        self._k = k
        self._enqueue = self._redis.register_script(_ENQUEUE)
        self._claim = self._redis.register_script(_CLAIM)
        self._complete = self._redis.register_script(_COMPLETE)
        self._fail = self._redis.register_script(_FAIL)
        self._release = self._redis.register_script(_RELEASE)
        self._cancel = self._redis.register_script(_CANCEL)
        self._retry_dead = self._redis.register_script(_RETRY_DEAD)
        self._seven = [k[n] for n in ("state", "body", "ready", "running", "token", "attempts")]
        self._seven.append(k["error"])

    def on_enqueue(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each enqueue (through this object) that added jobs."""
        self._listeners.append(listener)

    @property
    def keys(self) -> dict[str, str]:
        """The Redis keys of this queue, by role (for operators and tests)."""
        return dict(self._k)

    async def enqueue(self, jobs: Sequence[Job]) -> int:
        """Add ``jobs``; returns how many were new (a key seen before is ignored)."""
        batch = [as_job(job) for job in jobs]
        if not batch:
            return 0
        encoded = [(job.key, msgspec.json.encode(job.body())) for job in batch]  # all, first:
        now = time.time()  # a job that cannot be encoded stops the batch before any write
        keys = [self._k["state"], self._k["body"], self._k["ready"]]
        added = 0
        for start in range(0, len(encoded), _BATCH):
            args: list[Any] = [now]
            for key, body in encoded[start : start + _BATCH]:
                args += [key, body]
            added += int(await self._enqueue(keys=keys, args=args))
        self.counts["enqueued"] += added
        self.counts["duplicates"] += len(batch) - added
        if added:
            for listener in self._listeners:
                listener()
        return added

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[Job]:
        if not isinstance(worker_id, str) or not worker_id:
            raise ValueError(f"claim(worker_id=): expected a non-empty string, got {worker_id!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"claim(limit=): expected an int >= 1, got {limit!r}")
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int | float):
            raise ValueError(f"claim(lease_seconds=): expected seconds > 0, got {lease_seconds!r}")
        if not lease_seconds > 0:
            raise ValueError(f"claim(lease_seconds=): expected seconds > 0, got {lease_seconds!r}")
        now = time.time()
        token = new_id()
        rows = await self._claim(keys=self._seven, args=[now, limit, now + lease_seconds, token])
        jobs = []
        lost = []
        for key, body, attempts, error in rows:
            if not body:  # cannot happen through this API; never hand out a job without one
                lost.append(_text(key))
                continue
            jobs.append(
                Job.from_body(
                    _text(key),
                    msgspec.json.decode(body),
                    attempts=int(attempts),
                    token=token,
                    error=_text(error) or None,
                )
            )
        if lost:
            await self.fail_many(
                [(_lost(key, token), "the job's body is missing in Redis", None) for key in lost]
            )
        jobs.sort(key=lambda j: (j.position if j.position is not None else -1, j.key))
        return jobs

    def _pairs(self, jobs: Sequence[Job], what: str) -> list[str]:
        args: list[str] = []
        for job in jobs:
            if job.token is None:
                raise ValueError(f"{what}(): job {job.key!r} was not claimed (it has no lease)")
            args += [job.key, job.token]
        return args

    async def complete(self, job: Job, output: Mapping[str, Any] | None = None) -> bool:
        return bool(await self.complete_many([job]))

    async def complete_many(self, jobs: Sequence[Job]) -> int:
        args = self._pairs(list(jobs), "complete")
        return int(await self._complete(keys=self._seven, args=args)) if args else 0

    async def fail(self, job: Job, error: str, retry_at: float | None) -> bool:
        return bool(await self.fail_many([(job, error, retry_at)]))

    async def fail_many(self, failures: Sequence[tuple[Job, str, float | None]]) -> int:
        batch = list(failures)
        if not batch:
            return 0
        args: list[Any] = [time.time()]
        for job, error, retry_at in batch:
            if job.token is None:
                raise ValueError(f"fail(): job {job.key!r} was not claimed (it has no lease)")
            args += [job.key, job.token, "" if retry_at is None else float(retry_at), str(error)]
        return int(await self._fail(keys=[*self._seven, self._k["dead"]], args=args))

    async def release(self, jobs: Sequence[Job]) -> int:
        args = self._pairs(list(jobs), "release")
        if not args:
            return 0
        return int(await self._release(keys=self._seven[:6], args=[time.time(), *args]))

    async def cancel_for_events(self, event_ids: Sequence[str]) -> int:
        """Cancel the pending jobs of ``event_ids`` (reorgs are rare: this reads the pending
        keys and picks those whose job names one of the events)."""
        if isinstance(event_ids, str):
            raise TypeError("cancel_for_events(): expected a sequence of event ids, not a string")
        wanted = set(event_ids)
        if not wanted:
            return 0
        candidates: list[str] = []
        async for raw, _ in self._redis.zscan_iter(self._k["ready"], count=1000):
            key = _text(raw)
            if _names_event(key, wanted):
                candidates.append(key)
        if not candidates:
            return 0
        bodies = await self._redis.hmget(self._k["body"], candidates)
        mine = [
            key
            for key, body in zip(candidates, bodies, strict=True)
            if body is not None and msgspec.json.decode(body).get("event_id") in wanted
        ]
        keys = [self._k[n] for n in ("state", "body", "ready", "attempts", "error")]
        cancelled = 0
        for start in range(0, len(mine), _BATCH):
            cancelled += int(await self._cancel(keys=keys, args=mine[start : start + _BATCH]))
        return cancelled

    async def state(self, key: str) -> str | None:
        value = await self._redis.hget(self._k["state"], key)
        return None if value is None else _text(value)

    async def depth(self) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._k["ready"])
            pipe.zcard(self._k["running"])
            ready, running = await pipe.execute()
        return int(ready) + int(running)

    async def dead_count(self) -> int:
        """Dead jobs (the DLQ), counted."""
        return int(await self._redis.zcard(self._k["dead"]))

    async def dead(self, limit: int = 100) -> list[Job]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"dead(limit=): expected an int >= 1, got {limit!r}")
        keys = [_text(k) for k in await self._redis.zrevrange(self._k["dead"], 0, limit - 1)]
        if not keys:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._k["body"], keys)
            pipe.hmget(self._k["attempts"], keys)
            pipe.hmget(self._k["error"], keys)
            bodies, attempts, errors = await pipe.execute()
        out = []
        for key, body, tries, error in zip(keys, bodies, attempts, errors, strict=True):
            if body is None:
                continue
            out.append(
                Job.from_body(
                    key,
                    msgspec.json.decode(body),
                    attempts=int(tries or 0),
                    error=None if error is None else _text(error),
                )
            )
        return out

    async def retry_dead(self, key: str | None = None) -> int:
        keys = [self._k["state"], self._k["ready"], self._k["attempts"], self._k["dead"]]
        args: list[Any] = [time.time(), "*" if key is None else key]
        return int(await self._retry_dead(keys=keys, args=args))

    async def drop(self) -> None:
        """Delete every key of this queue (tests, and operators retiring a prefix)."""
        await self._redis.delete(*self._k.values())

    async def close(self) -> None:
        await self._redis.aclose()

    def __repr__(self) -> str:
        return f"<RedisJobQueue {redact_url(self.url)} prefix={self.prefix!r}>"


def _names_event(key: str, event_ids: set[str]) -> bool:
    """Whether ``key`` may be the key of a job of one of ``event_ids`` (an event id may hold a
    colon itself, so every prefix up to a colon is tried; the body decides)."""
    at = key.find(":")
    while at != -1:
        if key[:at] in event_ids:
            return True
        at = key.find(":", at + 1)
    return False


def _lost(key: str, token: str) -> Job:
    """A stand-in for a job whose body is gone, so that fail() can mark it dead."""
    from tidings.event import Event  # noqa: PLC0415
    from tidings.triggers.definitions import ActionSpec  # noqa: PLC0415

    return Job(key, "", "", 0, ActionSpec(type="unknown"), Event(type="unknown"), token=token)
