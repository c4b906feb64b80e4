"""``python -m bench conditions --quick`` runs, every contender's answers counted, and prints
every figure (figures live in BENCHMARKS.md)."""

from __future__ import annotations

from tests.benchrun import one_row, run_bench


def test_the_benchmark_smoke_run_counts_every_match() -> None:
    # exits 0 only when every contender's true answers agree with tidings' count
    out = run_bench("conditions", "--quick", timeout=120)
    assert "tidings" in one_row(out, "conditions.compile")
    for name in ("and", "path", "in", "string", "matches", "absent"):
        row = one_row(out, f"conditions.eval[{name}]")
        assert "tidings" in row and "floor" in row and "jmespath" in row, row
    for count in (100, 1000):
        assert "matched per event" in one_row(out, f"index.evaluate[{count}]")
        assert "floor" in one_row(out, f"index.match[{count}]")
