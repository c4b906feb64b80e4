"""The in-process benchmark runs, counts every event and exits 0 (figures live in BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bus_benchmark_quick_run_counts_everything() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "bus", "--quick"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("bus.inline", "bus.async", "blinker", "pyee"):
        assert row in proc.stdout
