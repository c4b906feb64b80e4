"""``GET /metrics``: Prometheus text built from the worker's counters and the queue's depth.

A custom collector reads the live numbers at scrape time, so nothing on the delivery path
touches a metrics library and a scrape costs a few small queries. The service's store (its head
and every subscription it runs) is exported through ``tidings.integrations.prometheus``, so
its families are the ones an application's own exporter shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from tidings.integrations.prometheus import TidingsCollector
from tidings.webhooks.queue import QueueStats
from tidings.webhooks.worker import LATENCY_BUCKETS

if TYPE_CHECKING:
    from tidings.server.service import Service

__all__ = ["render_metrics"]

log = logging.getLogger("tidings.server")

SCRAPE_TIMEOUT = 5.0  # seconds for the store's part of a scrape; past it, the rest is served


class _Collector:
    def __init__(self, service: Service, stats: QueueStats | None, accepted: int) -> None:
        self.service = service
        self.queue_stats = stats
        self.accepted = accepted

    def collect(self) -> Iterator[Metric]:
        worker = self.service.worker.stats
        published = CounterMetricFamily(
            "tidings_events_published", "Events accepted by POST /events"
        )
        published.add_metric([], self.accepted)
        yield published
        families = {
            name: CounterMetricFamily(f"tidings_webhook_{name}", text, labels=["endpoint"])
            for name, text in (
                ("attempts", "Delivery attempts made"),
                ("delivered", "Deliveries that got a 2xx"),
                ("failed", "Attempts that did not succeed"),
                ("retries", "Failed attempts scheduled for another try"),
                ("dead", "Deliveries given up (dead letters)"),
            )
        }
        for endpoint_id, c in sorted(worker.per_endpoint.items()):
            families["attempts"].add_metric([endpoint_id], c.attempts)
            families["delivered"].add_metric([endpoint_id], c.delivered)
            families["failed"].add_metric([endpoint_id], c.failed)
            families["retries"].add_metric([endpoint_id], c.retried)
            families["dead"].add_metric([endpoint_id], c.dead)
        yield from families.values()
        cumulative, running = [], 0
        for bound, count in zip(
            [*map(str, LATENCY_BUCKETS), "+Inf"], worker.latency_buckets, strict=True
        ):
            running += count
            cumulative.append((bound, running))
        latency = HistogramMetricFamily(
            "tidings_webhook_delivery_latency_seconds",
            "From accepting an event to its first delivery attempt",
        )
        latency.add_metric([], cumulative, worker.latency_sum)
        yield latency
        stats = self.queue_stats
        if stats is None:
            return
        depth = GaugeMetricFamily(
            "tidings_webhook_queue_depth", "Deliveries by state", labels=["state"]
        )
        for state in ("pending", "delivering", "dead"):
            depth.add_metric([state], getattr(stats, state))
        yield depth
        per = GaugeMetricFamily(
            "tidings_webhook_endpoint_queue_depth",
            "Deliveries per endpoint and state",
            labels=["endpoint", "state"],
        )
        for endpoint_id, counts in sorted(stats.per_endpoint.items()):
            for state, count in sorted(counts.items()):
                per.add_metric([endpoint_id, state], count)
        yield per
        oldest = GaugeMetricFamily(
            "tidings_webhook_oldest_pending_seconds", "Age of the oldest due pending delivery"
        )
        oldest.add_metric([], stats.oldest_pending_age or 0.0)
        yield oldest


async def render_metrics(service: Service, extra: Sequence[Any] = ()) -> tuple[bytes, str]:
    """The exposition text; ``extra`` are more collectors read at the same scrape (the
    triggers' figures, ``server/triggers_metrics.py``)."""
    try:
        stats: QueueStats | None = await asyncio.wait_for(service.queue.astats(), 5.0)
    except Exception:
        stats = None  # the store is away: /health says so; counters still export
    webhooks = _Collector(service, stats, service.accepted_count)
    store = TidingsCollector()
    store.add(service.store)
    try:  # the store is queried in a thread: a slow database must not stall the server
        text = await asyncio.wait_for(
            asyncio.to_thread(_render, webhooks, store, *extra), SCRAPE_TIMEOUT
        )
    except TimeoutError:
        log.warning(
            "/metrics: the store did not answer within %ss; served without it", SCRAPE_TIMEOUT
        )
        text = _render(webhooks, *extra)
    return text, CONTENT_TYPE_LATEST


def _render(*collectors: Any) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
