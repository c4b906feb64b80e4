"""Time as a dependency: the system clock, and a timer wheel that runs callbacks later.

Retries and timeouts ask the clock instead of sleeping, so tests swap in
``tidings.testing.FakeClock`` and check exact schedules without waiting.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "SystemClock", "Timer", "system_clock"]

log = logging.getLogger("tidings.clock")


class Timer:
    """A scheduled callback; ``cancel()`` stops it if it has not run yet."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for delays and durations)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for records people read)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once, ``delay`` seconds from now, off the caller's thread."""
        ...

    def pending(self) -> int:
        """How many timers are scheduled and not yet run."""
        ...


class SystemClock:
    """Real time; timers run on one daemon thread started on first use."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def pending(self) -> int:
        with self._cond:
            return sum(1 for _, _, t in self._heap if not t.cancelled)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(delay, 0.0), callback)
        with self._cond:
            heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="tidings-timers", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return timer

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    when, _, timer = self._heap[0]
                    wait = when - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._cond.wait(wait)
            if timer.cancelled:
                continue
            try:
                timer.callback()
            except Exception:
                log.exception("timer callback %r failed", timer.callback)


_SYSTEM = SystemClock()


def system_clock() -> SystemClock:
    """The process-wide system clock (one timer thread for every bus)."""
    return _SYSTEM
