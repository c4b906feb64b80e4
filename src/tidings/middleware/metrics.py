"""MetricsMiddleware: time every attempt and report outcomes to a hook (Prometheus, logs, ...)."""

from __future__ import annotations

import time
from typing import Any, Protocol

from tidings.event import Event
from tidings.middleware.base import AsyncCall, Call, Middleware, SubscriptionInfo

__all__ = ["MetricsHook", "MetricsMiddleware"]


class MetricsHook(Protocol):
    """Receives one call per attempt; ``error`` is None on success. Must not raise."""

    def on_attempt(
        self, sub: SubscriptionInfo, event: Event, seconds: float, error: BaseException | None
    ) -> None: ...


class MetricsMiddleware(Middleware):
    """Calls ``hook.on_attempt`` after every attempt with its duration and outcome."""

    def __init__(self, hook: MetricsHook) -> None:
        self.hook = hook

    def wrap(self, call: Call, sub: SubscriptionInfo) -> Call:
        hook = self.hook.on_attempt
        clock = time.perf_counter

        def measured(event: Event) -> Any:
            start = clock()
            try:
                result = call(event)
            except BaseException as exc:
                hook(sub, event, clock() - start, exc)
                raise
            hook(sub, event, clock() - start, None)
            return result

        return measured

    def awrap(self, call: AsyncCall, sub: SubscriptionInfo) -> AsyncCall:
        hook = self.hook.on_attempt
        clock = time.perf_counter

        async def measured(event: Event) -> Any:
            start = clock()
            try:
                result = await call(event)
            except BaseException as exc:
                hook(sub, event, clock() - start, exc)
                raise
            hook(sub, event, clock() - start, None)
            return result

        return measured
