"""RetryMiddleware: decide whether a failed attempt is tried again, and after how long."""

from __future__ import annotations

from tidings.delivery import HandlerDelivery
from tidings.retry import RetryPolicy

__all__ = ["RetryMiddleware"]


class RetryMiddleware:
    """Applies the subscription's RetryPolicy, else the bus default.

    It returns a delay instead of sleeping: the bus schedules the retry on its clock, so a
    delivery waiting out its backoff never holds a worker or the publisher.
    """

    def __init__(self, default: RetryPolicy | None = None) -> None:
        self.default = default

    def policy_for(self, delivery: HandlerDelivery) -> RetryPolicy | None:
        own: RetryPolicy | None = getattr(delivery.subscription, "retry", None)
        return own if own is not None else self.default

    def next_delay(self, delivery: HandlerDelivery, error: BaseException) -> float | None:
        """Seconds until the next attempt, or None when the failure is final."""
        policy = self.policy_for(delivery)
        if policy is None or not policy.should_retry(delivery.attempts, error):
            return None
        return policy.delay(delivery.attempts)
