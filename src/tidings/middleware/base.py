"""The middleware protocol: wrap one attempt of a handler, sync or async.

Middleware sees a subscription only through ``SubscriptionInfo`` (its name, timeout and retry
policy), so it depends on nothing of the bus that hosts it: the bus imports middleware, never
the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from tidings.event import Event
from tidings.retry import RetryPolicy

__all__ = ["AsyncCall", "Call", "Middleware", "SubscriptionInfo", "compose"]

Call = Callable[[Event], Any]
AsyncCall = Callable[[Event], Awaitable[Any]]


class SubscriptionInfo(Protocol):
    """What a middleware may read of the subscription it wraps (``tidings.Subscription`` is
    one): the handler's ``name``, its attempt ``timeout`` in seconds (None: unbounded) and its
    own ``retry`` policy (None: the bus default). The object is also a stable key for the
    subscription, e.g. for per-handler metrics."""

    @property
    def name(self) -> str: ...

    @property
    def timeout(self) -> float | None: ...

    @property
    def retry(self) -> RetryPolicy | None: ...


class Middleware:
    """Base class: override ``wrap`` for sync handlers and ``awrap`` for coroutine handlers.

    Wrapping happens once, when a subscription is made, so a middleware that does nothing for
    a subscription (returns ``call`` unchanged) costs nothing per event.
    """

    def wrap(self, call: Call, sub: SubscriptionInfo) -> Call:
        return call

    def awrap(self, call: AsyncCall, sub: SubscriptionInfo) -> AsyncCall:
        return call


def compose(
    handler: Callable[[Event], Any],
    middleware: Sequence[Middleware],
    sub: SubscriptionInfo,
    *,
    is_async: bool,
) -> Callable[[Event], Any]:
    """Wrap ``handler`` so that ``middleware[0]`` is outermost."""
    call = handler
    for mw in reversed(middleware):
        call = mw.awrap(call, sub) if is_async else mw.wrap(call, sub)
    return call
