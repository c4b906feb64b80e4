"""Running a benchmark the way its smoke tests do: ``python -m bench NAME --quick``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(*args: str, timeout: float) -> str:
    """The benchmark's standard output; fails the test (with both outputs) unless it exits 0,
    which it does only when every event was counted once."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def one_row(out: str, name: str) -> str:
    """The one output line ``name: ...``."""
    found = [line for line in out.splitlines() if line.startswith(name + ":")]
    assert len(found) == 1, f"expected one row {name!r} in:\n{out}"
    return found[0]
