"""The delivery worker: claims due deliveries, sends them signed, records every attempt.

Throughput comes from three things: claims and outcomes move in batches (one transaction per
batch, not per delivery), requests run concurrently on one aiohttp session with keep-alive, and
each endpoint is paced on its own (token bucket, in-flight bound, circuit breaker) so a slow or
failing receiver never holds up the others.

Safety comes from the lease. A claimed delivery belongs to this worker until its lease ends; a
delivery that waited here so long that its lease could run out before the request finishes is
released instead of sent, so a takeover by another worker never overlaps a request in flight.
After a crash the lease simply expires and the delivery is sent again with the same message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tidings import __version__
from tidings.topics import SubscriptionIndex, compile_pattern
from tidings.webhooks.endpoint import Endpoint
from tidings.webhooks.guard import GuardedResolver, UnsafeURL, resolve_checked
from tidings.webhooks.limits import CircuitBreaker, TokenBucket
from tidings.webhooks.payload import render
from tidings.webhooks.queue import Attempt, Claimed, DeliveryQueue, Outcome
from tidings.webhooks.signing import Signer

__all__ = ["DeliveryWorker", "Router", "WorkerStats"]

log = logging.getLogger("tidings.webhooks")

RESPONSE_BODY_MAX = 2048
MAX_RETRY_AFTER = 86400.0  # a Retry-After beyond a day is taken as a day
USER_AGENT = f"tidings-webhooks/{__version__}"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Router:
    """Which enabled endpoints an event type goes to: a glob index, not a scan of every pattern."""

    def __init__(self, endpoints: Sequence[Endpoint] = ()) -> None:
        self._index: SubscriptionIndex[str] = SubscriptionIndex()
        self.update(endpoints)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        index: SubscriptionIndex[str] = SubscriptionIndex()
        for ep in endpoints:
            if ep.enabled:
                for pattern in ep.events:
                    index.add(compile_pattern(pattern), ep.id)
        self._index = index

    def __call__(self, event: Any) -> list[str]:
        return list(dict.fromkeys(self._index.match(event.type)))


@dataclass
class EndpointCounters:
    attempts: int = 0
    delivered: int = 0
    failed: int = 0  # attempts that did not succeed
    retried: int = 0
    dead: int = 0


@dataclass
class WorkerStats:
    """What /metrics exports; plain numbers so this layer needs no metrics library."""

    per_endpoint: dict[str, EndpointCounters] = field(default_factory=dict)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0

    def endpoint(self, endpoint_id: str) -> EndpointCounters:
        counters = self.per_endpoint.get(endpoint_id)
        if counters is None:
            counters = self.per_endpoint[endpoint_id] = EndpointCounters()
        return counters

    def observe_latency(self, seconds: float) -> None:
        """Accept -> first attempt, the delay a receiver sees."""
        i = 0
        while i < len(LATENCY_BUCKETS) and seconds > LATENCY_BUCKETS[i]:
            i += 1
        self.latency_buckets[i] += 1
        self.latency_sum += seconds
        self.latency_count += 1


class _State:
    """Per-endpoint runtime state, rebuilt when the endpoint's settings change."""

    def __init__(self, ep: Endpoint) -> None:
        self.endpoint = ep
        self.signer = Signer(ep.secrets) if ep.secrets else None
        self.extra = dict(ep.headers)
        if ep.auth is not None:
            self.extra.update(ep.auth.headers())
        self.bucket = TokenBucket(ep.rate_limit, ep.burst) if ep.rate_limit else None
        self.slots = asyncio.Semaphore(ep.max_in_flight)
        self.policy = ep.retry_policy()
        self.busy = 0
        self.breaker = CircuitBreaker()
        self.disabling = False


@dataclass
class _Answer:
    """What came back from one request."""

    status: int | None = None
    text: str | None = None
    error: str | None = None
    wait: float | None = None  # Retry-After, seconds
    permanent: bool = False  # retrying cannot help (the SSRF guard refused the address)


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), if any."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class DeliveryWorker:
    """Runs in the server's event loop; ``start``, ``wake`` after accepting, ``stop`` to drain."""

    def __init__(
        self,
        queue: DeliveryQueue,
        *,
        concurrency: int = 50,
        lease: float = 60.0,
        batch: int = 200,
        poll_interval: float = 0.5,
        guard_config_endpoints: bool = False,
        allow_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        on_disable: Callable[[Endpoint, str], None] | None = None,
    ) -> None:
        self.queue = queue
        self.concurrency = concurrency
        self.lease = lease
        self.batch = batch
        self.poll_interval = poll_interval
        self.guard_config_endpoints = guard_config_endpoints
        self.allow_networks = tuple(allow_networks)
        self.on_disable = on_disable
        self.stats = WorkerStats()
        self.last_beat = time.monotonic()
        self._states: dict[str, _State] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[None]] = set()  # started, request not sent yet
        self._outcomes: list[Outcome] = []
        self._wake = asyncio.Event()
        self._flush = asyncio.Event()
        self._slot = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._guarded: aiohttp.ClientSession | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector)
        guarded = aiohttp.TCPConnector(
            limit=self.concurrency, resolver=GuardedResolver(self.allow_networks)
        )
        self._guarded = aiohttp.ClientSession(connector=guarded)
        self._loops = [
            asyncio.ensure_future(self._claim_loop()),
            asyncio.ensure_future(self._flush_loop()),
        ]

    async def stop(self, timeout: float = 10.0) -> int:
        """Stop claiming, let requests in flight finish within ``timeout``, hand back the rest.

        Returns how many deliveries were released unsent (they stay pending, nothing is lost).
        """
        self._stopping = True
        self._wake.set()
        waiting = list(self._waiting)
        for task in waiting:  # not sent yet (rate limit, slot): hand back now
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        unfinished = list(self._tasks)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await self._drain_outcomes()
        for session in (self._session, self._guarded):
            if session is not None:
                await session.close()
        return len(waiting) + len(unfinished)

    def wake(self) -> None:
        """New deliveries were accepted: claim now rather than at the next poll."""
        self._wake.set()

    async def reload(self) -> None:
        """Re-read endpoints (after a config reload or an API change); keep unchanged state."""
        endpoints = await asyncio.to_thread(self.queue.endpoints)
        states: dict[str, _State] = {}
        for ep in endpoints:
            old = self._states.get(ep.id)
            states[ep.id] = old if old is not None and old.endpoint == ep else _State(ep)
        self._states = states
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # ---- claiming --------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self.last_beat = time.monotonic()
            free = self.concurrency - len(self._tasks)
            if free <= 0:
                self._slot.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot.wait(), self.poll_interval)
                continue
            skip: list[str] = []
            room = 0
            for ep_id, st in self._states.items():
                space = st.endpoint.max_in_flight - st.busy
                if space <= 0 or not st.endpoint.enabled or not st.breaker.claimable():
                    skip.append(ep_id)
                else:
                    room += space
            self._wake.clear()
            limit = min(free, self.batch, room)
            if limit <= 0:  # every endpoint is full or paused: wait for a slot or news
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                continue
            try:
                claimed = await self.queue.aclaim(limit, self.lease, skip_endpoints=skip)
            except Exception as exc:  # the database is away: say so, try again shortly
                log.warning("webhook worker: claiming deliveries failed: %s", exc)
                await asyncio.sleep(min(self.poll_interval * 4, 2.0))
                continue
            self._start_all(claimed)
            if len(claimed) < limit:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    def _start_all(self, claimed: list[Claimed]) -> None:
        """Start what each endpoint has room for; hand the rest back at once.

        A claim is ordered by due time across endpoints, so it can bring more for one endpoint
        than its ``max_in_flight``; holding those here would take worker slots from the others.
        """
        extra: list[Claimed] = []
        unknown = False
        now = time.monotonic()
        for item in claimed:
            st = self._states.get(item.delivery.endpoint_id)
            if st is None:  # registered since the last reload
                unknown = True
                extra.append(item)
            elif st.busy >= st.endpoint.max_in_flight:
                extra.append(item)
            else:
                st.busy += 1
                self._spawn(self._deliver(item, st, now))
        if extra:
            self._spawn(self._release_many(extra, reload=unknown))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot.set()
        self._wake.set()  # an endpoint has room again: claim for it now, not at the next poll
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook worker: delivery task failed", exc_info=task.exception())

    async def _release_many(self, items: list[Claimed], reload: bool) -> None:
        if reload:
            await self.reload()
        try:
            await asyncio.to_thread(
                self.queue.release, [(i.delivery.id, i.lease_token) for i in items]
            )
        except Exception as exc:  # the leases run out by themselves; nothing is lost
            log.warning("webhook worker: releasing %d deliveries failed: %s", len(items), exc)

    # ---- delivering ------------------------------------------------------------------------

    async def _deliver(self, item: Claimed, st: _State, claimed_at: float) -> None:
        ep = st.endpoint
        sent = False
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            if st.bucket is not None:
                await st.bucket.take()
            async with st.slots:
                # The request may take ep.timeout: never start one that could outlive the lease
                # (half the slack is kept as a margin for the outcome to be recorded).
                if time.monotonic() - claimed_at > (self.lease - ep.timeout) / 2:
                    return
                if not st.breaker.allows() or self._stopping:
                    return
                sent = True
                self._waiting.discard(task)
                outcome = await self._attempt(item, st)
            self._outcomes.append(outcome)
            self._flush.set()
        except asyncio.CancelledError:
            sent = False
            raise
        finally:
            self._waiting.discard(task)
            st.busy -= 1
            if not sent:
                await self._release(item)

    async def _release(self, item: Claimed) -> None:
        await self._release_many([item], reload=False)

    async def _attempt(self, item: Claimed, st: _State) -> Outcome:
        ep = st.endpoint
        delivery = item.delivery
        number = delivery.attempts + 1
        body, headers = render(item.event, ep.format)
        headers.update(st.extra)
        headers["User-Agent"] = USER_AGENT
        headers["tidings-event-id"] = item.event.id
        headers["tidings-event-type"] = item.event.type
        headers["tidings-attempt"] = str(number)
        started = time.time()
        if st.signer is not None:
            headers.update(st.signer.headers(delivery.id, int(started), body))
        else:  # unsigned: the message id still lets receivers drop repeats
            headers["webhook-id"] = delivery.id
            headers["webhook-timestamp"] = str(int(started))
        self.stats.endpoint(ep.id).attempts += 1
        if number == 1:
            self.stats.observe_latency(max(0.0, started - delivery.created_at))
        t0 = time.perf_counter()
        answer = await self._post(ep, body, headers)
        attempt = Attempt(
            delivery.id,
            number,
            started,
            time.perf_counter() - t0,
            answer.status,
            answer.text,
            answer.error,
        )
        return self._judge(item, st, attempt, answer)

    async def _post(self, ep: Endpoint, body: bytes, headers: dict[str, str]) -> _Answer:
        """One request; every way it can go wrong becomes an error text, never an exception."""
        answer = _Answer()
        guarded = ep.source == "api" or self.guard_config_endpoints
        session = self._guarded if guarded else self._session
        assert session is not None, "DeliveryWorker.start() was not called"
        try:
            if guarded:
                await resolve_checked(ep.url, self.allow_networks)
            async with session.post(
                ep.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=ep.timeout),
                allow_redirects=False,
            ) as resp:
                answer.status = resp.status
                raw = await resp.content.read(RESPONSE_BODY_MAX)
                answer.text = raw.decode("utf-8", "replace") or None
                answer.wait = retry_after(resp.headers.get("Retry-After"), time.time())
        except UnsafeURL as exc:
            answer.error, answer.permanent = str(exc), True
        except TimeoutError:
            answer.error = f"timed out after {ep.timeout:g}s"
        except aiohttp.ClientConnectorError as exc:
            answer.error = f"cannot connect: {exc.os_error or exc}"
        except (aiohttp.ClientError, OSError) as exc:
            answer.error = f"{type(exc).__name__}: {exc}"
        status = answer.status
        if status is not None and 300 <= status < 400:
            answer.error = f"HTTP {status}: redirects are not followed"
        elif status is not None and not 200 <= status < 300:
            answer.error = f"HTTP {status}"
        return answer

    def _judge(self, item: Claimed, st: _State, attempt: Attempt, answer: _Answer) -> Outcome:
        """Delivered, retry later, or dead; and what the endpoint's pacing learns from it."""
        ep, token, counters = st.endpoint, item.lease_token, self.stats.endpoint(st.endpoint.id)
        if answer.error is None:
            counters.delivered += 1
            st.breaker.success()
            return Outcome(attempt.delivery_id, token, attempt, "delivered")
        counters.failed += 1
        # The endpoint id, not its URL: URLs can carry tokens (chat webhooks put them in paths).
        log.info(
            "delivery %s to endpoint %s, attempt %d: %s",
            attempt.delivery_id, ep.id, attempt.number, answer.error,
        )  # fmt: skip
        if answer.status == 410:
            counters.dead += 1
            self._disable(st, "the receiver answered 410 Gone")
            return Outcome(attempt.delivery_id, token, attempt, "dead")
        st.breaker.failure()
        if answer.wait is not None and st.bucket is not None:
            st.bucket.pause(answer.wait)
        since = st.breaker.failing_since
        if since is not None and time.time() - since >= ep.failure_window:
            self._disable(st, f"failing without a success for {ep.failure_window:g}s")
        if answer.permanent or attempt.number > st.policy.max_retries:
            counters.dead += 1
            return Outcome(attempt.delivery_id, token, attempt, "dead")
        counters.retried += 1
        delay = st.policy.delay(attempt.number)
        if answer.wait is not None:  # the receiver's Retry-After wins over backoff, within reason
            delay = max(delay, min(answer.wait, MAX_RETRY_AFTER))
        return Outcome(attempt.delivery_id, token, attempt, "pending", time.time() + delay)

    def _disable(self, st: _State, reason: str) -> None:
        if st.disabling:
            return
        st.disabling = True
        log.warning("webhook endpoint %s disabled: %s", st.endpoint.id, reason)
        self._spawn(self._set_disabled(st.endpoint, reason))

    async def _set_disabled(self, ep: Endpoint, reason: str) -> None:
        try:
            await asyncio.to_thread(self.queue.set_enabled, ep.id, False, reason)
        except Exception as exc:
            log.error("webhook endpoint %s: could not be disabled: %s", ep.id, exc)
            return
        if self.on_disable is not None:
            self.on_disable(ep, reason)
        await self.reload()

    # ---- recording outcomes ----------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._flush.wait()
            self._flush.clear()
            await asyncio.sleep(0.002)  # let a few more outcomes join this transaction
            await self._drain_outcomes()

    async def _drain_outcomes(self) -> None:
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            try:
                await self.queue.afinish(batch)
            except Exception as exc:
                # Not recorded means sent again after the lease: at-least-once, never lost.
                log.warning("webhook worker: recording %d outcomes failed: %s", len(batch), exc)
                self._outcomes[:0] = batch
                if self._stopping:
                    return
                await asyncio.sleep(0.5)
