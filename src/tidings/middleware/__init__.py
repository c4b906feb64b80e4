"""Middleware around each delivery attempt of a handler.

The order is fixed and documented (docs/bus.md):

1. ``MetricsMiddleware``  - outermost: times every attempt and sees its outcome.
2. user middleware        - in the order given to ``Bus(middleware=[...])``.
3. ``TimeoutMiddleware``  - innermost: bounds one attempt of the handler.
4. the handler.

Middleware types against ``SubscriptionInfo`` (name, timeout, retry), not against the bus, so
this package imports nothing of the bus. What happens after a failed attempt is the bus's own
business: its ``RetryScheduler`` (``tidings.bus.retries``) schedules the next attempt on the
clock and its ``DeadLetterRecorder`` (``tidings.bus.dead_letters``) keeps the delivery once
retries are exhausted.
"""

from tidings.middleware.base import AsyncCall, Call, Middleware, SubscriptionInfo, compose
from tidings.middleware.metrics import MetricsHook, MetricsMiddleware
from tidings.middleware.timeout import HandlerTimeout, TimeoutMiddleware

__all__ = [
    "AsyncCall",
    "Call",
    "HandlerTimeout",
    "MetricsHook",
    "MetricsMiddleware",
    "Middleware",
    "SubscriptionInfo",
    "TimeoutMiddleware",
    "compose",
]
