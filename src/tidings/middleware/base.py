"""The middleware protocol: wrap one attempt of a handler, sync or async."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from tidings.event import Event

if TYPE_CHECKING:
    from tidings.bus import Subscription

__all__ = ["AsyncCall", "Call", "Middleware", "compose"]

Call = Callable[[Event], Any]
AsyncCall = Callable[[Event], Awaitable[Any]]


class Middleware:
    """Base class: override ``wrap`` for sync handlers and ``awrap`` for coroutine handlers.

    Wrapping happens once, when a subscription is made, so a middleware that does nothing for
    a subscription (returns ``call`` unchanged) costs nothing per event.
    """

    def wrap(self, call: Call, sub: Subscription) -> Call:
        return call

    def awrap(self, call: AsyncCall, sub: Subscription) -> AsyncCall:
        return call


def compose(
    handler: Callable[[Event], Any],
    middleware: Sequence[Middleware],
    sub: Subscription,
    *,
    is_async: bool,
) -> Callable[[Event], Any]:
    """Wrap ``handler`` so that ``middleware[0]`` is outermost."""
    call = handler
    for mw in reversed(middleware):
        call = mw.awrap(call, sub) if is_async else mw.wrap(call, sub)
    return call
