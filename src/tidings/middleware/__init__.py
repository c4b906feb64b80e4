"""Middleware around each delivery attempt, and the failure policy after it.

The order is fixed and documented (docs/bus.md):

1. ``MetricsMiddleware``  - outermost: times every attempt and sees its outcome.
2. user middleware        - in the order given to ``Bus(middleware=[...])``.
3. ``TimeoutMiddleware``  - innermost: bounds one attempt of the handler.
4. the handler.

When an attempt raises, ``RetryMiddleware`` decides whether and when to try again (it schedules
on the clock; it never sleeps in a worker), and once retries are exhausted
``DeadLetterMiddleware`` records the delivery in the dead-letter queue.
"""

from tidings.middleware.base import AsyncCall, Call, Middleware, compose
from tidings.middleware.dead_letter import DeadLetter, DeadLetterQueue
from tidings.middleware.metrics import MetricsHook, MetricsMiddleware
from tidings.middleware.retry import RetryMiddleware
from tidings.middleware.timeout import HandlerTimeout, TimeoutMiddleware

__all__ = [
    "AsyncCall",
    "Call",
    "DeadLetter",
    "DeadLetterQueue",
    "HandlerTimeout",
    "MetricsHook",
    "MetricsMiddleware",
    "Middleware",
    "RetryMiddleware",
    "TimeoutMiddleware",
    "compose",
]
