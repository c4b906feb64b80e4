"""The live-stream benchmark (SSE clients and the dashboard) runs end to end (``--quick``) and
counts every event per watcher and per dashboard feed.

Figures live in BENCHMARKS.md; this only proves the benchmark works: both ingestion rows and
the lag rows print, and every watcher saw every event of its round once, in order (the
benchmark exits 1 otherwise).
"""

from __future__ import annotations

import re

import pytest

from tests.benchrun import one_row, run_bench

RATE = r"[\d,]+/s \(min [\d,]+, max [\d,]+\)"


@pytest.mark.timeout(120)
def test_stream_benchmark_quick_counts_every_event() -> None:
    out = run_bench("stream", "--quick", timeout=110)
    assert "count check: every watcher saw every event of its round once, in order" in out, out
    assert "COUNT ERRORS" not in out
    assert re.search(rf"^stream\.ingest\.alone: {RATE}$", one_row(out, "stream.ingest.alone"))
    watched = one_row(out, "stream.ingest.watched")
    assert re.search(rf"^stream\.ingest\.watched: {RATE} · drop -?[\d.]+%", watched), watched
    lag = one_row(out, "stream.lag.client_p99")
    assert re.search(r"worst client [\d.]+ ms · median client [\d.]+ ms", lag), lag
    assert re.search(
        r"p50 [\d.]+ ms · p99 [\d.]+ ms · max [\d.]+ ms", one_row(out, "stream.lag.all")
    )
    assert "10 SSE watchers of '**' and 1 dashboard page(s)" in out
    feed = one_row(out, "stream.dashboard.feed_lag")
    assert re.search(r"1 page\(s\), [\d,]+ events: p50 [\d.]+ ms · p99 [\d.]+ ms", feed), feed
    page = one_row(out, "stream.dashboard.page")
    assert re.search(r"[1-9][\d,]* loads of / and /ui/endpoints .* p99 [\d.]+ ms", page), page
