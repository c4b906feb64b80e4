"""The Bus: publish/subscribe in process, or through a broker with ``Bus(transport=...)``.

One module per role, so a reader of the in-process bus never has to read the broker link:

- ``core``: ``Bus`` itself: subscribing, inline publishing, attempts and failures, closing;
- ``subscription``: ``Subscription``, one handler on one pattern, and its counters;
- ``workers``: the worker pool of ``mode="async"`` (bounded queues, order per key);
- ``retries``: ``RetryScheduler``, the bus's retries of failed attempts on its clock;
- ``dead_letters``: the deliveries that failed for good, and the recorder that keeps them;
- ``history``: the bounded record of deliveries behind ``bus.deliveries()``;
- ``reports``: ``BusStats``, ``CloseReport``, ``BusClosed``, ``BusQueueFull``;
- ``broker_link``: the private event-loop thread behind ``Bus(transport=...)``;
- ``from_config``: ``Bus.from_config`` (loaded lazily: it builds on ``Bus``);
- ``noop``: ``NoopBus``, what ``event_broker.enabled: false`` gives.
"""

from tidings.bus.core import Bus
from tidings.bus.dead_letters import DeadLetter, DeadLettered, DeadLetterQueue
from tidings.bus.reports import BusClosed, BusQueueFull, BusStats, CloseReport
from tidings.bus.subscription import Handler, Subscription

__all__ = [
    "Bus",
    "BusClosed",
    "BusQueueFull",
    "BusStats",
    "CloseReport",
    "DeadLetter",
    "DeadLetterQueue",
    "DeadLettered",
    "Handler",
    "Subscription",
]
