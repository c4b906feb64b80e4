"""The delivery worker: claims due deliveries, sends them signed, records every attempt.

Throughput comes from four things: claims and outcomes move in batches (one transaction per
batch, not per delivery); deliveries an accept creates are leased to this worker in that same
transaction, so they start without a claim; requests go through a ``Sender`` (aiohttp with
keep-alive, here or in a child process on a core of its own); and each endpoint has its own lane
(token bucket, in-flight bound, circuit breaker), so a slow or failing receiver never holds up
the others.

Safety comes from the lease. A claimed delivery belongs to this worker until its lease ends; a
delivery that waited here so long that its lease could run out before the request finishes is
released instead of sent, so a takeover by another worker never overlaps a request in flight.
After a crash the lease simply expires and the delivery is sent again with the same message id.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import email.utils
import gzip
import ipaddress
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidings import __version__
from tidings.topics import SubscriptionIndex, compile_pattern
from tidings.webhooks.endpoint import Endpoint
from tidings.webhooks.limits import CircuitBreaker, TokenBucket
from tidings.webhooks.payload import render
from tidings.webhooks.queue import Attempt, Claimed, DeliveryQueue, Outcome
from tidings.webhooks.sender import LocalSender, ProcessSender, Request, Sender
from tidings.webhooks.signing import Signer

__all__ = ["DeliveryWorker", "Router", "WorkerStats"]

log = logging.getLogger("tidings.webhooks")

MAX_RETRY_AFTER = 86400.0  # a Retry-After beyond a day is taken as a day
COMPRESS_MIN = 1024  # smaller bodies gain little and cost CPU on both sides
USER_AGENT = f"tidings-webhooks/{__version__}"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Router:
    """Which enabled endpoints an event type goes to: a glob index, not a scan of every pattern."""

    def __init__(self, endpoints: Sequence[Endpoint] = ()) -> None:
        self._index: SubscriptionIndex[str] = SubscriptionIndex()
        self.update(endpoints)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        index: SubscriptionIndex[str] = SubscriptionIndex()
        self.enabled = sum(1 for ep in endpoints if ep.enabled)  # most deliveries per event
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
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1


class _Lane:
    """One endpoint's runtime: deliveries claimed for it, its senders and its breaker.

    Kept across endpoint changes (a reload swaps the settings, not the lane), so nothing
    claimed is forgotten and the breaker remembers.
    """

    def __init__(self) -> None:
        self.ready: deque[tuple[Claimed, float]] = deque()  # (delivery, monotonic claim time)
        self.senders = 0  # tasks serving this lane
        self.active = 0  # deliveries taken by a sender (waiting for a token, or sending)
        self.reserved = 0  # room promised to an accept in progress (see DeliveryWorker.reserve)
        self.sending = 0  # requests in flight
        self.breaker = CircuitBreaker()
        self.disabling = False

    @property
    def busy(self) -> int:
        return len(self.ready) + self.active


def max_timeout(lease: float) -> float:
    """The longest request a worker holding ``lease`` starts: the lease less a margin (a
    quarter, at most a second) to wait for a sender slot and to record the outcome."""
    return lease - min(lease / 4, 1.0)


class _State:
    """Per-endpoint settings-derived state, rebuilt when the endpoint's settings change."""

    def __init__(self, ep: Endpoint, lane: _Lane | None = None, lease: float = 60.0) -> None:
        self.endpoint = ep
        self.signer = Signer(ep.secrets) if ep.secrets else None
        self.extra = dict(ep.headers)
        if ep.auth is not None:
            self.extra.update(ep.auth.headers())
        # Values an error text must not show (an exception may quote the header it refused).
        auth = () if ep.auth is None else (ep.auth.bearer, ep.auth.password, ep.auth.value)
        values = (*self.extra.values(), *ep.secrets, *auth)
        self.hidden = sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)
        # A request that could outlive the lease is never started (see _deliver): with a
        # timeout at or near the lease none would ever start, and the worker would claim and
        # release the same deliveries in a busy loop. Whatever the database holds, cut it.
        self.timeout = min(ep.timeout, max_timeout(lease))
        self.bucket = TokenBucket(ep.rate_limit, ep.burst) if ep.rate_limit else None
        self.policy = ep.retry_policy()
        self.lane = lane if lane is not None else _Lane()
        # Senders per endpoint: twice its in-flight bound, so the next request waits at the
        # sender (which keeps the bound) and starts the moment one ends.
        self.max_senders = 2 * ep.max_in_flight
        # Claimed but unsent deliveries kept per endpoint: enough that senders never wait on
        # the database, few enough that a claim never hoards another worker's share.
        self.cap = 3 * ep.max_in_flight


class _NotSent(Exception):
    """The sender was closing and did not send the request."""


@dataclass
class _Answer:
    """What came back from one request."""

    status: int | None = None
    text: str | None = None
    error: str | None = None
    wait: float | None = None  # Retry-After, seconds
    permanent: bool = False  # retrying cannot help (the SSRF guard refused the address)
    ours: bool = False  # tidings' own failure: the endpoint's breaker does not count it


def _hide(text: str, hidden: Sequence[str]) -> str:
    """``text`` with every secret value of the endpoint masked."""
    for value in hidden:
        text = text.replace(value, "***")
    return text


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
        sender_process: bool = False,
    ) -> None:
        self.queue = queue
        self.concurrency = concurrency
        self.lease = lease
        self.batch = batch
        self.poll_interval = poll_interval
        self.guard_config_endpoints = guard_config_endpoints
        self.allow_networks = tuple(allow_networks)
        self.on_disable = on_disable
        sender_class = ProcessSender if sender_process else LocalSender
        self._sender: Sender = sender_class(concurrency, self.allow_networks)
        self._request_ids = itertools.count()
        self.stats = WorkerStats()
        self.last_beat = time.monotonic()
        self._states: dict[str, _State] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()  # tasks with a request on the wire
        self._senders = 0
        self._released_on_stop = 0
        self._outcomes: list[Outcome] = []
        self._wake = asyncio.Event()
        self._flush = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._warned: set[tuple[str, float]] = set()  # (endpoint, timeout) cut to the lease

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        await self._sender.start()
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
        self._sender.stop_sending()  # requests queued at the sender come back unsent
        unsent: list[Claimed] = []
        for st in self._states.values():
            unsent.extend(item for item, _ in st.lane.ready)
            st.lane.ready.clear()
        waiting = [t for t in self._tasks if t not in self._sending]
        for task in waiting:  # holding a delivery for a token or a slot: it hands it back
            task.cancel()
        if unsent:
            await self._release_many(unsent, reload=False)
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
        await self._sender.close()
        return len(unsent) + self._released_on_stop

    def wake(self) -> None:
        """New deliveries were accepted: claim now rather than at the next poll."""
        self._wake.set()

    async def reload(self) -> None:
        """Re-read endpoints (after a config reload or an API change); keep unchanged state."""
        endpoints = await asyncio.to_thread(self.queue.endpoints)
        states: dict[str, _State] = {}
        for ep in endpoints:
            old = self._states.get(ep.id)
            if old is not None and old.endpoint == ep:
                states[ep.id] = old
            else:
                states[ep.id] = st = _State(ep, old.lane if old is not None else None, self.lease)
                self._warn_timeout(st)
        self._states = states
        self._wake.set()

    def _warn_timeout(self, st: _State) -> None:
        ep = st.endpoint
        if st.timeout == ep.timeout or (ep.id, ep.timeout) in self._warned:
            return
        self._warned.add((ep.id, ep.timeout))
        log.warning(
            "webhook endpoint %s: timeout %gs is not safely below server.lease %gs; its requests "
            "are cut at %gs. Lower the endpoint's timeout or raise server.lease",
            ep.id, ep.timeout, self.lease, st.timeout,
        )  # fmt: skip

    @property
    def in_flight(self) -> int:
        """Requests on the wire now."""
        return sum(st.lane.sending for st in self._states.values())

    @property
    def claimed(self) -> int:
        """Deliveries this worker holds a lease on: on the wire or waiting for their turn."""
        return sum(st.lane.busy for st in self._states.values())

    def breaker_state(self, endpoint_id: str) -> str | None:
        """``closed``, ``open`` or ``half-open`` for an endpoint this worker serves, else None."""
        st = self._states.get(endpoint_id)
        return None if st is None else st.lane.breaker.state

    # ---- claiming --------------------------------------------------------------------------

    def _room(self) -> tuple[int, int, list[str]]:
        """(room to claim into, low-water mark, endpoints to skip)."""
        skip: list[str] = []
        room = total_cap = held = 0
        for ep_id, st in self._states.items():
            lane = st.lane
            held += lane.busy + lane.reserved
            space = st.cap - lane.busy - lane.reserved
            if space <= 0 or not st.endpoint.enabled or not lane.breaker.claimable():
                skip.append(ep_id)
            else:
                room += space
                total_cap += st.cap
        room = min(room, 3 * self.concurrency - held, self.batch)
        # Claim in batches, not one row per freed slot: one transaction serves many requests.
        low = max(1, min(total_cap, 3 * self.concurrency, self.batch) // 4)
        return room, (low if held else 1), skip

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self.last_beat = time.monotonic()
            self._wake.clear()
            limit, low, skip = self._room()
            if limit < low:  # full, paused, or not enough room yet to make a claim worth it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                continue
            try:
                claimed = await self.queue.aclaim(limit, self.lease, skip_endpoints=skip)
            except Exception as exc:  # the database is away: say so, try again shortly
                log.warning("webhook worker: claiming deliveries failed: %s", exc)
                await asyncio.sleep(min(self.poll_interval * 4, 2.0))
                continue
            self._distribute(claimed)
            if len(claimed) < limit:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    def reserve(self) -> dict[str, int]:
        """Room per endpoint for deliveries leased at accept time, so they start without a
        claim round trip. Give it back with ``adopt`` (or ``unreserve`` if the accept failed).
        """
        if self._stopping:
            return {}
        out: dict[str, int] = {}
        left = 3 * self.concurrency - sum(
            st.lane.busy + st.lane.reserved for st in self._states.values()
        )
        for ep_id, st in self._states.items():
            lane = st.lane
            if left <= 0:
                break
            if not st.endpoint.enabled or not lane.breaker.claimable():
                continue
            space = min(st.cap - lane.busy - lane.reserved, left)
            if space > 0:
                out[ep_id] = space
                lane.reserved += space
                left -= space
        return out

    def unreserve(self, reserved: dict[str, int]) -> None:
        for ep_id, n in reserved.items():
            st = self._states.get(ep_id)
            if st is not None:
                st.lane.reserved = max(0, st.lane.reserved - n)
        self._wake.set()

    def adopt(self, reserved: dict[str, int], claimed: list[Claimed]) -> None:
        """Take the deliveries an accept leased to this worker; send them now."""
        self.unreserve(reserved)
        if self._stopping:  # too late to send: hand them back
            if claimed:
                self._spawn(self._release_many(claimed, reload=False))
            return
        self._distribute(claimed)

    def _distribute(self, claimed: list[Claimed]) -> None:
        """Queue each delivery on its endpoint's lane; hand back what a lane has no room for.

        A claim is ordered by due time across endpoints, so it can bring one endpoint more than
        its share; holding those here would starve the others.
        """
        extra: list[Claimed] = []
        unknown = False
        now = time.monotonic()
        for item in claimed:
            st = self._states.get(item.delivery.endpoint_id)
            if st is None:  # registered since the last reload
                unknown = True
                extra.append(item)
            elif st.lane.busy >= st.cap:
                extra.append(item)
            else:
                st.lane.ready.append((item, now))
        if extra:
            self._spawn(self._release_many(extra, reload=unknown))
        self._feed()

    def _feed(self) -> None:
        """Start senders where deliveries wait: up to ``max_in_flight`` per endpoint and
        ``concurrency`` in all."""
        if self._stopping:
            return
        for st in self._states.values():
            lane = st.lane
            want = min(st.max_senders, lane.busy)
            while lane.senders < want and self._senders < 2 * self.concurrency:
                lane.senders += 1
                self._senders += 1
                self._spawn(self._serve(st.endpoint.id, lane))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
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

    async def _serve(self, endpoint_id: str, lane: _Lane) -> None:
        """A sender: takes this endpoint's claimed deliveries one by one until none are left."""
        try:
            while lane.ready and not self._stopping:
                item, claimed_at = lane.ready.popleft()
                lane.active += 1
                try:
                    st = self._states.get(endpoint_id)
                    if st is None:  # the endpoint was deleted meanwhile
                        await self._release_many([item], reload=False)
                        continue
                    await self._deliver(item, st, claimed_at)
                finally:
                    lane.active -= 1
                self._wake.set()  # room for more: the claim loop decides if a claim is due
        finally:
            lane.senders -= 1
            self._senders -= 1
            self._feed()

    async def _deliver(self, item: Claimed, st: _State, claimed_at: float) -> None:
        lane = st.lane
        sent = False
        try:
            if st.bucket is not None:
                await st.bucket.take()
            # The request may take st.timeout: never start one that could outlive the lease
            # (half the slack is kept as a margin for the outcome to be recorded).
            if time.monotonic() - claimed_at > (self.lease - st.timeout) / 2:
                return
            if not lane.breaker.allows() or self._stopping:
                return
            sent = True
            task = asyncio.current_task()
            assert task is not None
            self._sending.add(task)
            lane.sending += 1
            try:
                outcome = await self._attempt(item, st)
            except _NotSent:
                sent = False  # handed back below; no attempt was made
                self._released_on_stop += 1
                return
            finally:
                lane.sending -= 1
                self._sending.discard(task)
            self._outcomes.append(outcome)
            self._flush.set()
        except asyncio.CancelledError:
            if self._stopping and not sent:
                self._released_on_stop += 1
            raise
        finally:
            if not sent:
                await self._release_many([item], reload=False)

    async def _attempt(self, item: Claimed, st: _State) -> Outcome:
        """One attempt, always judged: whatever fails while the request is built or sent is
        recorded as a failed attempt (and retried by policy), never left in flight."""
        ep = st.endpoint
        delivery = item.delivery
        number = delivery.attempts + 1
        started = time.time()
        self.stats.endpoint(ep.id).attempts += 1
        if number == 1:
            self.stats.observe_latency(max(0.0, started - delivery.created_at))
        t0 = time.perf_counter()
        try:
            body, headers = self._request(item, st, number, started)
            answer = await self._post(st, body, headers)
        except _NotSent:
            raise
        except Exception as exc:  # see the docstring
            answer = _Answer(error=_hide(f"{type(exc).__name__}: {exc}", st.hidden))
            log.warning(
                "delivery %s to endpoint %s: the request could not be made: %s",
                delivery.id, ep.id, answer.error,
            )  # fmt: skip
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

    def _request(
        self, item: Claimed, st: _State, number: int, started: float
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one attempt: rendered, signed, maybe compressed."""
        ep, delivery = st.endpoint, item.delivery
        body, headers = render(item.event, ep.format)
        headers.update(st.extra)
        headers["User-Agent"] = USER_AGENT
        headers["tidings-event-id"] = item.event.id
        headers["tidings-event-type"] = item.event.type
        headers["tidings-attempt"] = str(number)
        if st.signer is not None:
            headers.update(st.signer.headers(delivery.id, int(started), body))
        else:  # unsigned: the message id still lets receivers drop repeats
            headers["webhook-id"] = delivery.id
            headers["webhook-timestamp"] = str(int(started))
        if ep.compress == "gzip" and len(body) >= COMPRESS_MIN:
            # Signed before compressing: most servers (aiohttp, Express) hand the handler the
            # decoded body, and that is what a receiver verifies.
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    async def _post(self, st: _State, body: bytes, headers: dict[str, str]) -> _Answer:
        """One request through the sender (here or in its process); the answer, judged later."""
        ep = st.endpoint
        guarded = ep.guarded(self.guard_config_endpoints)
        request = Request(
            next(self._request_ids),
            ep.url,
            headers,
            body,
            st.timeout,
            guarded,
            ep.id,
            ep.max_in_flight,
        )
        resp = await self._sender.send(request)
        if resp.unsent:
            raise _NotSent
        error = None if resp.error is None else _hide(resp.error, st.hidden)
        answer = _Answer(resp.status, resp.text, error, None, resp.permanent, resp.ours)
        if resp.retry_after is not None:
            answer.wait = retry_after(resp.retry_after, time.time())
        status = resp.status
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
            st.lane.breaker.success()
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
        if not answer.ours:
            st.lane.breaker.failure()
        if answer.wait is not None and st.bucket is not None:
            st.bucket.pause(answer.wait)
        since = st.lane.breaker.failing_since
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
        if st.lane.disabling:
            return
        st.lane.disabling = True
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
