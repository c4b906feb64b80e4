"""The store benchmark runs end to end, prints every row with a figure and counts every event.

Figures live in BENCHMARKS.md; this only proves the benchmark works: every contender ran (none
skipped: SQLite, PostgreSQL and eventsourcing are all installed here) and every count matched
(the benchmark exits 1 on a lost or duplicated event).
"""

from __future__ import annotations

import re

import pytest

from tests.benchrun import one_row, run_bench
from tests.conftest import require_service

APPEND_ROWS = [
    "store.sqlite.{n} (FULL)",
    "store.sqlite.{n} stream+expected_version (FULL)",
    "store.sqlite.{n} (NORMAL)",
    "store.pg.{n}",
    "store.pg.{n} stream+expected_version",
    "store.pg.{n} seed trigger off",
]
LIVE_ROWS = [
    "store.sqlite.one_store.live",
    "store.sqlite.two_processes.live",
    "store.pg.listen.live",
]


@pytest.mark.timeout(180)
def test_store_benchmark_quick_run_prints_every_row_and_counts_everything() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    out = run_bench("store", "--quick", timeout=170)
    assert "count check: every contender wrote, read or handled every event exactly once" in out
    assert "COUNT ERRORS" not in out
    assert "skipped" not in out, out  # every backend and peer is installed and reachable here

    for n in ("append_1", "append_1000"):
        for template in APPEND_ROWS:
            line = one_row(out, template.format(n=n))
            assert "no figure" not in line, line
            assert re.search(r"tidings[^:]* [\d,]+/s \(min", line), line
            assert "floor" in line, line
        assert "eventsourcing" in one_row(out, f"store.pg.{n}")
        assert "eventsourcing" in one_row(out, f"store.sqlite.{n} (FULL)")
    assert "psycopg COPY floor" in one_row(out, "store.pg.append_1000")
    for backend in ("sqlite", "pg"):
        line = one_row(out, f"store.{backend}.read_all")
        for peer in ("fetch floor", "decode floor", "eventsourcing records", "domain events"):
            assert peer in line, line
    for prefix in LIVE_ROWS:
        for rate in ("1,000", "10,000"):
            line = one_row(out, f"{prefix} @ {rate}/s offered")
            assert re.search(r"stamp -> handler p50 .+ · p99 .+ · max ", line), line
    assert re.search(r"total time [\d.]+s", out)
