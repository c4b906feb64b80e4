"""Subscription: one handler subscribed to one pattern on a Bus, and its counters."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tidings.event import Event
from tidings.retry import RetryPolicy
from tidings.topics import Pattern
from tidings.transport import TransportSubscription

__all__ = ["Handler", "Subscription", "handler_name", "is_coroutine_function"]

Handler = Callable[[Any], Any]


class _Owner(Protocol):
    """The bus a subscription belongs to, as far as the subscription needs it."""

    def unsubscribe(self, sub: Subscription) -> bool: ...


class Subscription:
    """A handler subscribed to a pattern. Call ``unsubscribe()`` to stop it.

    The subscription is callable and calls the handler, so the decorator form leaves the
    decorated function usable as before. ``handled``, ``failed``, ``retried`` and ``dead``
    count its attempts in process (with a transport, its consumer's ``remote.stats`` does).
    It is the ``SubscriptionInfo`` middleware sees (``name``, ``timeout``, ``retry``).
    """

    __slots__ = (
        "__weakref__",
        "_bus",
        "acall",
        "active",
        "call",
        "dead",
        "failed",
        "handled",
        "handler",
        "is_async",
        "name",
        "pattern",
        "remote",
        "retried",
        "retry",
        "timeout",
    )

    def __init__(
        self,
        bus: _Owner,
        pattern: Pattern,
        handler: Handler,
        name: str,
        retry: RetryPolicy | None,
        timeout: float | None,
    ) -> None:
        self._bus = bus
        self.pattern = pattern
        self.handler = handler
        self.name = name
        self.retry = retry
        self.timeout = timeout
        self.is_async = is_coroutine_function(handler)
        self.active = True
        self.call: Callable[[Event], Any] = handler
        self.acall: Callable[[Event], Awaitable[Any]] | None = None
        # With Bus(transport=...): the broker-side subscription (its ``name`` keys the DLQ).
        self.remote: TransportSubscription | None = None
        self.handled = 0  # attempts that returned
        self.failed = 0  # attempts that raised
        self.retried = 0  # attempts after the first
        self.dead = 0  # deliveries dead-lettered

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)

    def unsubscribe(self) -> bool:
        """Stop delivering to this handler; False if it was already unsubscribed."""
        return self._bus.unsubscribe(self)

    def __repr__(self) -> str:
        return f"Subscription({self.pattern.text!r}, {self.name})"


def is_coroutine_function(fn: Any) -> bool:
    """True for ``async def`` functions and for objects with an ``async def __call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def handler_name(fn: Any) -> str:
    """``module.qualname`` of a handler: its default subscription name."""
    module = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qual}" if module else qual
