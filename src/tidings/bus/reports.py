"""What the bus tells its callers: its counters, its close report and its two refusals."""

from __future__ import annotations

from dataclasses import dataclass, field

from tidings.delivery import HandlerDelivery
from tidings.event import Event

__all__ = ["BusClosed", "BusQueueFull", "BusStats", "CloseReport"]


class BusClosed(RuntimeError):
    """The bus is closing or closed and takes no more events."""


class BusQueueFull(RuntimeError):
    """Async mode with ``when_full="raise"``: the worker queue for this event's key is full."""


@dataclass(slots=True)
class BusStats:
    """Bus-wide counters, read by exporters (``tidings.integrations.prometheus``).

    The success path counts only ``published`` (one int increment); the rest count on the
    slow paths. Per-handler counts live on each Subscription. Success-path increments take no
    lock: under CPython's GIL ``obj.n += 1`` is not interrupted between its read and write.
    """

    published: int = 0  # events taken by publish/apublish (dropped ones included)
    failed: int = 0  # handler attempts that raised
    retried: int = 0  # attempts after the first
    dead: int = 0  # deliveries dead-lettered
    dropped: int = 0  # async, when_full="drop": events dropped at a full queue
    blocked: int = 0  # async, when_full="block": publishes that had to wait for room
    rejected: int = 0  # async, when_full="raise": publishes refused with BusQueueFull


@dataclass(slots=True)
class CloseReport:
    """What ``close`` could not finish before its deadline."""

    drained: bool
    unfinished_events: list[Event] = field(default_factory=list)
    pending_retries: list[HandlerDelivery] = field(default_factory=list)
    running_tasks: int = 0

    def __bool__(self) -> bool:
        return self.drained

    def summary(self) -> str:
        if self.drained:
            return "drained: nothing left unfinished"
        return (
            f"not drained: {len(self.unfinished_events)} queued event(s) not handled, "
            f"{len(self.pending_retries)} retry(ies) cancelled, "
            f"{self.running_tasks} handler task(s) still running"
        )
