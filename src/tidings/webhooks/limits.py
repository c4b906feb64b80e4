"""Per-endpoint pacing: a token bucket for the rate limit and a circuit breaker for failures.

Both live in memory, one per endpoint, so one slow or failing receiver never holds up another.
A restart forgets them, which errs on the side of trying again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

__all__ = ["CircuitBreaker", "TokenBucket"]


class TokenBucket:
    """``rate`` requests per second on average, ``burst`` at once; waiters queue in order."""

    def __init__(
        self, rate: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError(f"TokenBucket rate: expected > 0 requests/s, got {rate!r}")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate)))
        self._tokens = self.burst
        self._clock = clock
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self) -> bool:
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    async def take(self) -> None:
        async with self._lock:  # one waiter at a time keeps the order fair
            while not self.try_take():
                await asyncio.sleep((1 - self._tokens) / self.rate)

    def pause(self, seconds: float) -> None:
        """A receiver said ``Retry-After``: no tokens until then."""
        self._refill()
        self._tokens = min(self._tokens, -seconds * self.rate)


class CircuitBreaker:
    """Closed -> open after ``threshold`` failures in a row that are also at least
    ``min_ratio`` of the last ``window`` outcomes; half-open after ``cooldown``.

    The ratio matters under concurrency: with 50 requests in flight, a receiver that fails a
    random 30% produces five failures in a row every few hundred requests, and pausing it
    then would only slow delivery down. A receiver that is down fails them all.

    While open, the worker claims nothing for the endpoint; half-open lets one probe through,
    whose success closes the circuit and whose failure opens it again for twice as long (up to
    ``max_cooldown``). ``failing_since`` is when the current run of failures began, which the
    worker compares with the endpoint's ``failure_window`` to disable it for good.
    """

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 5.0,
        max_cooldown: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        window: int = 20,
        min_ratio: float = 0.8,
    ) -> None:
        self.threshold = threshold
        self.min_ratio = min_ratio
        self._recent: deque[bool] = deque(maxlen=max(window, threshold))  # True: a failure
        self.base_cooldown = cooldown
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.failures = 0
        self.failing_since: float | None = None  # wall-clock seconds
        self.opened_at: float | None = None
        self.probing = False
        self._clock = clock

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self._clock() - self.opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def allows(self) -> bool:
        """Whether a request may go now (in half-open: only the one probe)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def claimable(self) -> bool:
        """Whether to claim deliveries for this endpoint at all."""
        state = self.state
        return state == "closed" or (state == "half-open" and not self.probing)

    def success(self) -> None:
        self._recent.append(False)
        self.failures = 0
        self.failing_since = None
        self.opened_at = None
        self.probing = False
        self.cooldown = self.base_cooldown

    def failure(self) -> None:
        self._recent.append(True)
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = time.time()
        if self.probing:
            self.probing = False
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self.opened_at = self._clock()
        elif self.failures >= self.threshold and self.opened_at is None:
            recent = self._recent
            if sum(recent) >= self.min_ratio * len(recent):
                self.opened_at = self._clock()
