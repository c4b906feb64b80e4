"""The webhook benchmark runs end to end (``--quick``) and counts every delivery.

Figures live in BENCHMARKS.md; this only proves the benchmark works: `tidings serve` and the
raw aiohttp floor both have a figure against the same receiver, the latency and failure rows
print, and every count matched (the benchmark exits 1 on a lost or duplicated delivery).
"""

from __future__ import annotations

import re

import pytest

from tests.benchrun import one_row, run_bench

RATE = r"[\d,]+/s"
DIST = r"p50 [\d.]+ (µs|ms|s) · p99 [\d.]+ (µs|ms|s) · max [\d.]+ (µs|ms|s)"


@pytest.mark.timeout(90)
def test_webhooks_benchmark_quick_delivers_every_event_once() -> None:
    out = run_bench("webhooks", "--quick", timeout=85)
    assert "delivery check: every event arrived exactly once with a 200" in out
    assert "DELIVERY ERRORS" not in out

    deliver = one_row(out, "webhooks.deliver")
    assert re.search(rf"^webhooks\.deliver: tidings {RATE} \(min [\d,]+, max", deliver), deliver
    assert re.search(rf"aiohttp floor {RATE} \(\d+\.\d\d\)", deliver), deliver
    assert re.search(rf"POST /events accepted {RATE}", one_row(out, "webhooks.deliver.ingest"))
    assert "tidings serve " in one_row(out, "webhooks.deliver.cpu")
    assert re.search(DIST, one_row(out, "webhooks.floor.latency"))
    latency = one_row(out, "webhooks.latency")
    assert "offered 500/s paced" in latency and re.search(DIST, latency), latency
    failures = one_row(out, "webhooks.failures")
    assert re.search(
        r"300 events, .* delivered 300, lost 0, duplicate message ids among 200s 0", failures
    ), failures
    assert "message id changed across retries for 0 events" in failures, failures
    assert "1 round of 2,000 events" in out
    assert "tidings >= 0.5 of the aiohttp floor: " in out
