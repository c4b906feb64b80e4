"""The outbox benchmark runs end to end, prints every row with a figure and counts every event.

Figures live in BENCHMARKS.md; this only proves the benchmark works: every contender ran and
every count matched (the benchmark exits 1 on a lost or duplicated row or event).
"""

from __future__ import annotations

import re

import pytest

from tests.benchrun import one_row, run_bench
from tests.conftest import require_service


@pytest.mark.timeout(180)
def test_outbox_benchmark_quick_run_prints_every_row_and_counts_everything() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", "127.0.0.1", 6379)
    out = run_bench("outbox", "--quick", timeout=170)
    assert "count check: every row and every event committed, published and counted" in out
    assert "COUNT ERRORS" not in out and "skipped" not in out, out
    for name in ("outbox.pg.write", "outbox.sqlite.write (FULL)", "outbox.sqlite.write (NORMAL)"):
        line = one_row(out, name)
        assert re.search(r"tidings [\d,]+/s \(min .* floor \(no event\) [\d,]+/s \(\d", line), line
    assert re.search(r"p50 .+ · p99 .+ · max ", one_row(out, "outbox.pg.lag @ 1,000/s offered"))
    line = one_row(out, "outbox.pg.relay_to_redis")
    assert "tidings relay" in line and "pipelined XADD floor" in line, line
    assert re.search(r"total time [\d.]+s", out)
