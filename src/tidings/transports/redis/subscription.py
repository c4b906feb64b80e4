"""What the Redis Streams and pub/sub subscriptions share: their identity, the exact pattern
check on an entry's type, and the Dispatcher that runs the handler."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tidings.topics import memoized
from tidings.transport import AsyncHandler, SubscribeOptions
from tidings.transports.dispatch import Dispatcher, DispatchStats

if TYPE_CHECKING:
    from tidings.transports.redis.transport import RedisTransport


class _RedisSubscriptionBase:
    def __init__(
        self,
        transport: RedisTransport,
        name: str,
        pattern: str,
        matches: Callable[[str], bool],
        handler: AsyncHandler,
        options: SubscribeOptions,
    ) -> None:
        self.transport = transport
        self.name = name
        self.pattern = pattern
        self.options = options
        self.lag: int | None = None
        self._wanted = memoized(matches)
        self._dispatcher = Dispatcher(
            name, handler, options, transport._write_dead_letter, on_error=transport.on_error
        )
        self._closed = False

    @property
    def stats(self) -> DispatchStats:
        return self._dispatcher.stats
