"""Benchmarks that print figures; ``python -m bench <name>`` runs ``bench/<name>.py``.

This module holds what every benchmark shares, so they all follow /work/shared/BENCHMARKING.md
the same way: contenders run interleaved round-robin in one process (the machine is noisy, ratios
taken in one run hold), each round is counted (a lost or duplicated event is an error, not a
figure), and figures print as median with min and max plus ratios to floors and peers.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

__all__ = [
    "Contender",
    "Kind",
    "Work",
    "fmt_duration",
    "fmt_rate",
    "machine_lines",
    "percentile",
    "run_rounds",
    "version_of",
]

Kind = Literal["floor", "peer", "tidings"]


class Work(Protocol):
    """One round's input, built before the clock starts; ``n`` is the units of work it holds."""

    @property
    def n(self) -> int: ...


W = TypeVar("W", bound=Work)


@dataclass(slots=True)
class Contender(Generic[W]):
    """One row of a figure: something that does a round of work and says if it was all done.

    ``run`` returns the seconds the work took; ``units`` says how much work that was (default
    ``work.n``); ``check`` returns None when every unit was delivered exactly once, else what
    went wrong. ``skipped`` (the reason) replaces ``run``
    for a peer that cannot be imported, so it is printed rather than silently dropped.
    """

    key: str
    label: str
    kind: Kind
    run: Callable[[W], float] | None
    check: Callable[[W], str | None] = lambda _work: None
    units: Callable[[W], int] | None = None
    skipped: str | None = None
    rates: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    def summary(self) -> str:
        if self.skipped is not None:
            return f"{self.label} skipped ({self.skipped})"
        if not self.rates:
            return f"{self.label} no figure"
        return (
            f"{self.label} {fmt_rate(self.median)}/s "
            f"(min {fmt_rate(min(self.rates))}, max {fmt_rate(max(self.rates))})"
        )

    def versus(self, other: Contender[W], label: str | None = None) -> str:
        """``other``'s figure with the ratio self/other: ``(0.70)`` for a floor, ``(3.0x)`` else."""
        if other.skipped is not None or not other.rates:
            return other.summary()
        ratio = self.median / other.median if other.median else float("inf")
        if other.kind == "floor":
            shown = f"{ratio:.2f}"
        else:
            shown = f"{ratio:.2g}x" if ratio < 10 else f"{ratio:.0f}x"
        return f"{label or other.label} {fmt_rate(other.median)}/s ({shown})"


def run_rounds(
    contenders: Sequence[Contender[W]],
    work: Callable[[int], W],
    *,
    warmup: W,
    min_rounds: int,
    max_rounds: int,
    budget: float,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Warm up, then run rounds until ``max_rounds`` or the time ``budget`` (seconds) is spent.

    Every round runs every contender once, round-robin, the order rotated by one each round so
    no contender always runs first (after a pause) or last. At least ``min_rounds`` run
    whatever the budget. ``work(round_index)`` supplies each round's input. Returns the number
    of measured rounds.
    """
    active = [c for c in contenders if c.run is not None]
    for c in active:
        _one(c, warmup, record=False)
    started = time.perf_counter()
    rounds = 0
    while rounds < max_rounds:
        spent = time.perf_counter() - started
        if rounds >= min_rounds and spent + spent / rounds > budget:
            break
        batch = work(rounds)
        shift = rounds % len(active) if active else 0
        for c in active[shift:] + active[:shift]:
            _one(c, batch, record=True)
        rounds += 1
        if progress is not None:
            progress(f"round {rounds} done ({time.perf_counter() - started:.1f}s)")
    return rounds


def _one(c: Contender[W], batch: W, *, record: bool) -> None:
    assert c.run is not None
    gc.collect()  # garbage of the previous contender is not this one's cost
    seconds = c.run(batch)
    problem = c.check(batch)
    if problem is not None:
        c.errors.append(problem)
    if record and seconds > 0:
        units = c.units(batch) if c.units is not None else batch.n
        c.rates.append(units / seconds)


def fmt_rate(value: float) -> str:
    """Three significant figures with thousands separators: 2,683,114 -> '2,680,000'."""
    if value <= 0:
        return "0"
    digits = len(str(int(value)))
    return f"{round(value, 3 - digits):,.0f}"


def fmt_duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[min(len(ordered), int(rank)) - 1]


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_lines(dists: Sequence[str]) -> list[str]:
    """Python, library versions and CPU: what a reader needs to weigh the figures."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    impl = platform.python_implementation()
    versions = ", ".join(f"{d} {version_of(d)}" for d in dists)
    return [
        f"python: {impl} {platform.python_version()} ({sys.platform}), "
        f"switch interval {sys.getswitchinterval() * 1e3:g} ms",
        f"libraries: {versions}",
        f"cpu: {os.cpu_count()} logical cores ({usable} usable), {_cpu_model()}",
    ]
