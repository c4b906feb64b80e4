"""DeliveryHistory: the bus's bounded record of handler deliveries and their status."""

from __future__ import annotations

import threading
from collections import OrderedDict

from tidings.delivery import DeliveryStatus, HandlerDelivery

__all__ = ["DeliveryHistory"]


class DeliveryHistory:
    """The latest state of each (event, subscription) delivery, oldest first, at most ``size``.

    The bus records failed, retried and dead deliveries always, successful ones only with
    ``track_deliveries=True`` (recording costs time on the success path).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, int], HandlerDelivery] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, delivery: HandlerDelivery) -> None:
        key = (delivery.event.id, id(delivery.subscription))
        with self._lock:
            items = self._items
            items[key] = delivery
            items.move_to_end(key)
            while len(items) > self._size:
                items.popitem(last=False)

    def list(
        self, event_id: str | None = None, status: DeliveryStatus | str | None = None
    ) -> list[HandlerDelivery]:
        with self._lock:
            items = list(self._items.values())
        return [
            d
            for d in items
            if (event_id is None or d.event.id == event_id)
            and (status is None or d.status == status)
        ]
