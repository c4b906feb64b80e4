"""What the dashboard's pages show, read from the service: endpoint health, one event with its
deliveries and causation chain, recent events.

Endpoint counters (attempts, delivered, failed, retries, dead) and queue depths are the very
numbers ``/metrics`` exports (the worker's counters and ``QueueStats``); latency p50/p99 and
the success rate are over the endpoint's attempts among the last ``RECENT_ATTEMPTS`` of the
attempts log within the last hour (a bounded read).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tidings.server.service import Service
from tidings.store.base import Criteria, Recorded
from tidings.webhooks.endpoint import Endpoint
from tidings.webhooks.queue import QueueStats, WebhookDelivery

__all__ = ["EndpointHealth", "EventView", "endpoint_health", "event_view", "recent_events"]

RECENT_ATTEMPTS = 5000
HOUR = 3600.0
CHAIN_DEPTH = 20  # causes followed up from an event
CHILDREN = 200  # events of the same correlation looked at for its effects
MAX_SHOWN = 64 * 1024  # characters of an event's data shown (the rest is cut, and says so)


@dataclass
class EndpointHealth:
    endpoint: Endpoint
    attempts: int = 0
    delivered: int = 0
    failed: int = 0
    retries: int = 0
    dead_total: int = 0  # deliveries given up since start (the counter)
    pending: int = 0
    delivering: int = 0
    dead: int = 0  # dead deliveries in the queue now (the DLQ)
    recent: int = 0  # attempts in the last hour (of the recent log)
    success_rate: float | None = None
    p50: float | None = None
    p99: float | None = None
    breaker: str = "n/a"
    oldest_pending_age: float | None = None


def _quantile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def endpoint_health(
    service: Service, stats: QueueStats | None, only: str | None = None
) -> list[EndpointHealth]:
    """Health of every endpoint (or of ``only``), in id order. Blocking: run in a thread."""
    queue = service.queue
    eps = sorted(queue.endpoints(), key=lambda e: e.id)
    if only is not None:
        eps = [ep for ep in eps if ep.id == only]
    cutoff = time.time() - HOUR
    durations: dict[str, list[float]] = {}
    ok: dict[str, int] = {}
    for endpoint_id, attempt in queue.recent_attempts(RECENT_ATTEMPTS):
        if attempt.started_at >= cutoff:
            durations.setdefault(endpoint_id, []).append(attempt.duration)
            good = attempt.status_code is not None and 200 <= attempt.status_code < 300
            ok[endpoint_id] = ok.get(endpoint_id, 0) + good
    oldest = queue.oldest_pending()
    now = time.time()
    out = []
    for ep in eps:
        h = EndpointHealth(ep, breaker=service.worker.breaker_state(ep.id) or "n/a")
        c = service.worker.stats.per_endpoint.get(ep.id)
        if c is not None:
            h.attempts, h.delivered, h.failed = c.attempts, c.delivered, c.failed
            h.retries, h.dead_total = c.retried, c.dead
        if stats is not None:
            counts = stats.per_endpoint.get(ep.id, {})
            h.pending = counts.get("pending", 0)
            h.delivering = counts.get("delivering", 0)
            h.dead = counts.get("dead", 0)
        times = sorted(durations.get(ep.id, []))
        if times:
            h.recent = len(times)
            h.success_rate = ok.get(ep.id, 0) / len(times)
            h.p50, h.p99 = _quantile(times, 0.5), _quantile(times, 0.99)
        if ep.id in oldest:
            h.oldest_pending_age = max(0.0, now - oldest[ep.id])
        out.append(h)
    return out


@dataclass
class EventView:
    record: Recorded
    envelope: dict[str, Any]
    data: str
    cut: bool
    deliveries: list[WebhookDelivery]
    causes: list[Recorded] = field(default_factory=list)  # oldest first, up to this event
    effects: list[Recorded] = field(default_factory=list)  # events it caused


def load_position(service: Service, position: int) -> Recorded | None:
    if position < 1:
        return None
    found = service.store.load(
        Criteria(after_position=position - 1, limit=1, include_invalidated=True)
    )
    return found[0] if found and found[0].position == position else None


def event_view(service: Service, position: int) -> EventView | None:
    """One stored event with its deliveries and causation chain. Blocking: run in a thread."""
    rec = load_position(service, position)
    if rec is None:
        return None
    envelope = msgspec.json.decode(rec.event.to_json())
    data = json.dumps(envelope.pop("data", None), indent=2, ensure_ascii=False, default=str)
    cut = len(data) > MAX_SHOWN
    deliveries = service.queue.deliveries(event_id=rec.event.id, limit=100)
    view = EventView(rec, envelope, data[:MAX_SHOWN], cut, deliveries)
    seen = {rec.event.id}
    cause = rec.event.causation_id
    while cause and cause not in seen and len(view.causes) < CHAIN_DEPTH:
        seen.add(cause)
        where = service.queue.event_position(cause)
        parent = None if where is None else load_position(service, where)
        if parent is None:
            break
        view.causes.insert(0, parent)
        cause = parent.event.causation_id
    if rec.event.correlation_id:
        related = service.store.load(
            Criteria(correlation_id=rec.event.correlation_id, limit=CHILDREN)
        )
        view.effects = [r for r in related if r.event.causation_id == rec.event.id]
    return view


def recent_events(service: Service, pattern: str | None, count: int = 50) -> list[Recorded]:
    """The newest ``count`` events (with a pattern: those matching it among the last 2,000
    positions), newest first. Blocking: run in a thread."""
    head = service.store.head()
    types = (pattern,) if pattern else ()
    after = max(0, head - (2000 if pattern else count))
    window = service.store.load(Criteria(types=types, after_position=after))
    return list(reversed(window[-count:]))
