"""Throughput and failure rates over the last hour: samples of the live counters, drawn as
inline SVG by the server (no chart library, nothing fetched by the browser).

A ``Sampler`` reads the store's head (every stored event counts, whatever fed it) and the
worker's per-endpoint counters (as ``/metrics`` exports them) every ``interval`` seconds and
keeps an hour of samples; a chart is the rate between consecutive samples. The samples live in
the process: after a restart the charts start again from then.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from tidings.server.service import Service

__all__ = ["Chart", "Sample", "Sampler", "charts"]

log = logging.getLogger("tidings.server")

HOUR = 3600.0
WIDTH, HEIGHT = 600, 140


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # epoch seconds
    head: int  # the store's last position
    attempts: int
    failed: int
    delivered: int
    dead: int


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    css: str  # the class that colours it
    points: str  # "x,y x,y ..." in the chart's box (numbers only)
    last: float


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    unit: str
    top: float  # the value at the top of the box
    lines: tuple[Line, ...]
    span: float  # seconds covered (an hour, or less since the server started)
    width: int = WIDTH
    height: int = HEIGHT


class Sampler:
    """An hour of samples of the service's counters, taken every ``interval`` seconds."""

    def __init__(self, service: Service, interval: float = 5.0) -> None:
        self.service = service
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=int(HOUR / interval) + 2)
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> Sample:
        head = await asyncio.to_thread(self.service.store.head)
        per = self.service.worker.stats.per_endpoint.values()
        return Sample(
            at=time.time(),
            head=head,
            attempts=sum(c.attempts for c in per),
            failed=sum(c.failed for c in per),
            delivered=sum(c.delivered for c in per),
            dead=sum(c.dead for c in per),
        )

    async def _run(self) -> None:
        while True:
            try:
                self.samples.append(await self.sample())
            except Exception as exc:  # the store is away: /health says so; try again later
                log.debug("dashboard sampler: %s", exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def charts(self) -> list[Chart]:
        """The charts from the kept samples and one taken now."""
        try:
            now = [await self.sample()]
        except Exception:
            now = []
        return charts([*self.samples, *now])


def _rates(samples: Sequence[Sample], field: str) -> list[tuple[float, float, float]]:
    """(from, to, per second) between consecutive samples."""
    out = []
    for a, b in itertools.pairwise(samples):
        dt = b.at - a.at
        if dt > 0:
            out.append((a.at, b.at, max(0.0, (getattr(b, field) - getattr(a, field)) / dt)))
    return out


def _line(
    name: str,
    css: str,
    rates: list[tuple[float, float, float]],
    start: float,
    span: float,
    top: float,
) -> Line:
    """A step line: each rate held flat over its interval."""

    def x(t: float) -> str:
        return f"{(t - start) / span * WIDTH:.1f}"

    def y(v: float) -> str:
        return f"{HEIGHT - min(v, top) / top * HEIGHT:.1f}"

    pts = " ".join(f"{x(t0)},{y(v)} {x(t1)},{y(v)}" for t0, t1, v in rates)
    return Line(name, css, pts, rates[-1][2] if rates else 0.0)


def _top(*series: list[tuple[float, float, float]]) -> float:
    """A round value above the highest point (1, 2, 5 times a power of ten)."""
    high = max((v for s in series for _, _, v in s), default=0.0)
    top = 1.0
    while top < high:
        for step in (2.0, 2.5, 2.0):
            top *= step
            if top >= high:
                break
    return top


def charts(samples: Sequence[Sample]) -> list[Chart]:
    """Events stored per second; delivery attempts per second, succeeded and failed; failed
    share of attempts."""
    recent = [s for s in samples if s.at >= (samples[-1].at - HOUR if samples else 0)]
    # The x axis covers the hour, or the time since the first sample when that is shorter.
    span = max(1.0, recent[-1].at - recent[0].at) if len(recent) > 1 else HOUR
    start = recent[-1].at - span if recent else time.time() - HOUR
    stored = _rates(recent, "head")
    delivered = _rates(recent, "delivered")
    failed = _rates(recent, "failed")
    top = _top(stored)
    top2 = _top(delivered, failed)
    share = [
        (t0, t1, 100.0 * f / a if a else 0.0)
        for (t0, t1, a), (_, _, f) in zip(_rates(recent, "attempts"), failed, strict=True)
    ]
    return [
        Chart("Events stored", "/s", top, (_line("stored", "c-stored", stored, start, span, top),),
              span),
        Chart("Deliveries", "/s", top2,
              (_line("delivered", "c-ok", delivered, start, span, top2),
               _line("failed attempts", "c-fail", failed, start, span, top2)), span),
        Chart("Failed share of attempts", "%", 100.0,
              (_line("failed", "c-fail", share, start, span, 100.0),), span),
    ]  # fmt: skip
