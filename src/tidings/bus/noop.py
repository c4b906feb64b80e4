"""NoopBus: accepts events and delivers nothing (``event_broker.enabled: false``)."""

from __future__ import annotations

import itertools
from typing import Any

from tidings.bus.core import Bus
from tidings.bus.reports import BusClosed
from tidings.event import Event

__all__ = ["NoopBus"]


class NoopBus(Bus):
    """A Bus that accepts events and delivers nothing: for code that must publish somewhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._count = itertools.count()
        self.publish_count = 0

    def publish(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"publish expects a tidings Event, got {type(event).__name__}")
        if self.closed:
            raise BusClosed("the bus is closed; publish before close() or use a new Bus")
        self.publish_count = next(self._count) + 1

    async def apublish(self, event: Event) -> None:
        self.publish(event)
