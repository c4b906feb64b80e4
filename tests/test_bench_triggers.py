"""``python -m bench triggers --quick`` runs, every job and every action counted, and prints
every figure (figures live in BENCHMARKS.md)."""

from __future__ import annotations

from tests.benchrun import one_row, run_bench


def test_the_benchmark_smoke_run_counts_every_job_and_action() -> None:
    # exits 0 only when the jobs enqueued match match_events' count and every latency event's
    # action started exactly once
    out = run_bench("triggers", "--quick", "--triggers", "100", timeout=240)
    row = one_row(out, "triggers.process[100]")
    assert "tidings" in row and "evaluate" in row and "read" in row and "jobs per event" in row
    row = one_row(out, "triggers.latency[100]")
    assert "p50" in row and "p99" in row and "1,000/s offered" in row
