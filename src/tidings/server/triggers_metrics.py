"""The ``tidings_triggers_*`` families of ``/metrics``: seed 001's monitoring figures
(``tidings.triggers.monitoring``) read once per scrape. Names and meanings: docs/metrics.md.

They are gauges: each is a reading of the database (rows change status, windows slide), not a
count this process keeps. A store without the triggers' tables (memory) exports none; a
database that does not answer within the scrape's time leaves them out, logged, and the rest of
``/metrics`` is served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

from tidings.triggers.monitoring import Figures

if TYPE_CHECKING:
    from tidings.server.triggers_api import TriggersApi

__all__ = ["TriggersCollector", "triggers_collectors"]

log = logging.getLogger("tidings.server")

READ_TIMEOUT = 5.0


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"tidings_triggers_{name}", text)
    family.add_metric([], value)
    return family


class TriggersCollector:
    """A prometheus collector of one ``Figures`` reading."""

    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self.figures
        yield _gauge("ingestion_rate", "Events stored per second over the last minute",
                     f.ingestion_rate)  # fmt: skip
        yield _gauge("store_head", "Position of the newest stored event", f.head)
        yield _gauge(
            "processing_lag_events",
            "Events stored after the processor's checkpoint (store head - checkpoint)",
            f.lag_events,
        )
        yield _gauge(
            "processing_lag_seconds",
            "Age of the oldest event the processor has not finished (0 when caught up)",
            f.lag_seconds,
        )
        yield _gauge("events_last_hour", "Events stored in the last hour", f.events_last_hour)
        yield _gauge(
            "matched_events_last_hour",
            "Events of the last hour that started at least one action",
            f.matched_events_last_hour,
        )
        yield _gauge(
            "match_rate",
            "Share (0..1) of the last hour's events that started an action",
            f.match_rate or 0.0,
        )
        results = GaugeMetricFamily(
            "tidings_triggers_action_results", "Action results by status", labels=["status"]
        )
        for status, count in sorted(f.results.items()):
            results.add_metric([status], count)
        yield results
        yield _gauge("queue_depth", "Action jobs waiting or running", f.queue_depth)
        yield _gauge("dead_jobs", "Action jobs dead after their last attempt (the DLQ)",
                     f.dead_jobs)  # fmt: skip
        block = GaugeMetricFamily(
            "tidings_triggers_chain_block",
            "Block number of each chain's last checkpoint",
            labels=["chain_id"],
        )
        age = GaugeMetricFamily(
            "tidings_triggers_chain_checkpoint_age_seconds",
            "Seconds since each chain's checkpoint moved",
            labels=["chain_id"],
        )
        for chain in f.chains:
            label = [str(chain["chain_id"])]
            block.add_metric(label, chain["block_number"])
            if chain["updated_at"] is not None:
                moved = datetime.fromisoformat(chain["updated_at"]).timestamp()
                age.add_metric(label, max(0.0, time.time() - moved))
        yield block
        yield age
        defined = GaugeMetricFamily(
            "tidings_triggers_defined", "Triggers defined, by source", labels=["source"]
        )
        defined.add_metric(["config"], f.config_triggers)
        defined.add_metric(["api"], f.saved_triggers)
        yield defined


async def triggers_collectors(api: TriggersApi | None) -> list[TriggersCollector]:
    """The triggers' collector for one scrape (none without a durable store, or when the
    database does not answer in time)."""
    if api is None or not api.durable():
        return []
    try:
        monitor = await asyncio.wait_for(api.monitor(), READ_TIMEOUT)
        figures = await asyncio.wait_for(monitor.figures(), READ_TIMEOUT)
    except Exception as exc:
        log.warning("/metrics: the triggers' figures were not read, served without them: %s", exc)
        return []
    return [TriggersCollector(figures)]
