"""What the JetStream and core subscriptions share: the pattern check, the Dispatcher."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.topics import Pattern, memoized
from tidings.transport import AsyncHandler, DeadMessage, SubscribeOptions
from tidings.transports.dispatch import Dispatcher, DispatchStats
from tidings.transports.nats.subjects import type_for_subject

if TYPE_CHECKING:
    from tidings.transports.nats.transport import NatsTransport


class _NatsSubscriptionBase:
    def __init__(
        self,
        transport: NatsTransport,
        pattern: Pattern,
        name: str,
        subject: str,
        exact: bool,
        handler: AsyncHandler,
        options: SubscribeOptions,
    ) -> None:
        self.name = name
        self.pattern = pattern.text
        self.group = options.group
        self.options = options
        self.filter_subject = subject
        self.lag: int | None = None
        self._transport = transport
        self._compiled = pattern
        self._exact = exact
        self._subject_matches = memoized(self._subject_matches_pattern)
        self._closed = False
        self._dispatcher = Dispatcher(
            name, handler, options, self._write_dead_letter, on_error=transport._link.notify
        )

    @property
    def stats(self) -> DispatchStats:
        return self._dispatcher.stats

    def _wanted(self, subject: str) -> bool:
        """Exact pattern check on the subject (for filters wider than the pattern)."""
        return self._exact or self._subject_matches(subject)

    def _subject_matches_pattern(self, subject: str) -> bool:
        type_ = type_for_subject(self._transport.prefix, subject)
        return type_ is not None and self._compiled.matches(type_)

    async def _write_dead_letter(self, dead: DeadMessage) -> None:
        raise NotImplementedError

    async def close(self, timeout: float = 5.0) -> None:
        raise NotImplementedError


async def _noop() -> None:
    return None
