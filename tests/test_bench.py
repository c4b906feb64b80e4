"""The in-process benchmark runs, counts every event and exits 0 (figures live in BENCHMARKS.md)."""

from __future__ import annotations

from tests.benchrun import run_bench


def test_bus_benchmark_quick_run_counts_everything() -> None:
    out = run_bench("bus", "--quick", timeout=120)
    for row in ("bus.inline", "bus.async", "blinker", "pyee"):
        assert row in out
