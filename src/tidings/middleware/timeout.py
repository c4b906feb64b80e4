"""TimeoutMiddleware: bound one attempt of a handler."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from tidings.event import Event, _current
from tidings.middleware.base import AsyncCall, Call, Middleware, SubscriptionInfo

__all__ = ["HandlerTimeout", "TimeoutMiddleware"]


class HandlerTimeout(TimeoutError):
    """A handler attempt ran past its timeout; it counts as a failure and may be retried."""


class TimeoutMiddleware(Middleware):
    """Fails an attempt that runs longer than the subscription's ``timeout``.

    Coroutine handlers are cancelled. A plain function cannot be stopped from outside, so it runs
    on a helper thread and the attempt fails at the deadline while the function finishes in the
    background: give blocking handlers their own timeouts (HTTP, database) where you can.
    """

    def __init__(self, max_threads: int = 32) -> None:
        self._max_threads = max_threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._max_threads, thread_name_prefix="tidings-timeout"
            )
        return self._pool

    def wrap(self, call: Call, sub: SubscriptionInfo) -> Call:
        limit = sub.timeout
        if limit is None:
            return call

        def timed(event: Event) -> Any:
            future = self._executor().submit(_run_in_context, call, event)
            try:
                return future.result(timeout=limit)
            except concurrent.futures.TimeoutError:
                raise HandlerTimeout(f"handler {sub.name} ran past its {limit}s timeout") from None

        return timed

    def awrap(self, call: AsyncCall, sub: SubscriptionInfo) -> AsyncCall:
        limit = sub.timeout
        if limit is None:
            return call

        async def timed(event: Event) -> Any:
            try:
                return await asyncio.wait_for(call(event), limit)
            except TimeoutError:
                raise HandlerTimeout(f"handler {sub.name} ran past its {limit}s timeout") from None

        return timed

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _run_in_context(call: Call, event: Event) -> Any:
    token = _current.set(event)
    try:
        return call(event)
    finally:
        _current.reset(token)
