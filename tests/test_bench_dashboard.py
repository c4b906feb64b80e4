"""The dashboard benchmark runs end to end (``--quick``) and counts every event its feeds see.

Figures live in BENCHMARKS.md; this only proves the benchmark works: both sides have an
ingestion figure, the feed lag and page load rows print, and every feed saw every event once
(the benchmark exits 1 otherwise).
"""

from __future__ import annotations

import re

import pytest

from tests.benchrun import one_row, run_bench

RATE = r"[\d,]+/s"
DIST = r"p50 [\d.]+ (µs|ms|s) · p99 [\d.]+ (µs|ms|s) · max [\d.]+ (µs|ms|s)"


@pytest.mark.timeout(120)
def test_dashboard_benchmark_quick_counts_every_event() -> None:
    out = run_bench("dashboard", "--quick", timeout=110)
    assert "feed check: every feed saw every event of its round once, in order" in out, out
    ingest = one_row(out, "dashboard.ingest")
    assert re.search(rf"without watchers {RATE} .* dashboard open {RATE} .* ratio \d\.\d\d", ingest)
    assert re.search(DIST, one_row(out, "dashboard.feed.lag"))
    assert re.search(DIST, one_row(out, "dashboard.page"))
