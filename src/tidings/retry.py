"""RetryPolicy: how often and how long to wait before a failed delivery is tried again."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RetryPolicy"]

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with a cap and optional jitter.

    Retry ``n`` (1-based) waits ``min(initial_delay * backoff_factor ** (n - 1), max_delay)``,
    then jitter takes away up to that fraction at random, so a crowd of failures spreads out
    instead of returning in lockstep. ``max_retries`` counts retries, not attempts: a delivery
    is attempted at most ``max_retries + 1`` times.
    """

    max_retries: int = 3
    initial_delay: float = 1.0
    max_delay: float = 30.0
    backoff_factor: float = 2.0
    jitter: float = 0.0
    retry_on: RetryOn = (Exception,)
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = (
            ("max_retries", self.max_retries, 0, "a whole number >= 0"),
            ("initial_delay", self.initial_delay, 0, "seconds >= 0"),
            ("max_delay", self.max_delay, 0, "seconds >= 0"),
            ("backoff_factor", self.backoff_factor, 1, "a factor >= 1"),
        )
        for name, value, low, expected in checks:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
                raise ValueError(f"RetryPolicy.{name}: expected {expected}, got {value!r}")
        if isinstance(self.max_retries, float):
            raise ValueError(
                f"RetryPolicy.max_retries: expected a whole number, got {self.max_retries!r}"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy.jitter: expected a fraction 0..1, got {self.jitter!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError(
                f"RetryPolicy.max_delay ({self.max_delay}) is below initial_delay "
                f"({self.initial_delay}); raise max_delay or lower initial_delay"
            )

    @classmethod
    def none(cls) -> RetryPolicy:
        """No retries: the first failure is final."""
        return cls(max_retries=0)

    def should_retry(self, retry_number: int, error: BaseException) -> bool:
        """True if retry ``retry_number`` (1-based) is allowed for ``error``."""
        if retry_number > self.max_retries:
            return False
        if isinstance(self.retry_on, tuple):
            return isinstance(error, self.retry_on)
        return bool(self.retry_on(error))

    def base_delay(self, retry_number: int) -> float:
        """The delay before retry ``retry_number`` without jitter."""
        delay = self.initial_delay * self.backoff_factor ** (retry_number - 1)
        return min(delay, self.max_delay)

    def delay(self, retry_number: int) -> float:
        """The delay before retry ``retry_number``, jitter applied."""
        base = self.base_delay(retry_number)
        if self.jitter:
            base -= base * self.jitter * self._rng.random()
        return base

    def schedule(self) -> list[float]:
        """Every base delay this policy would wait, in order (for docs, logs and tests)."""
        return [self.base_delay(n) for n in range(1, self.max_retries + 1)]
