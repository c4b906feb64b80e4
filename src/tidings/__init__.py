"""tidings: emit, keep, move, deliver and react to events."""

from tidings.bus import Bus, Subscription
from tidings.event import Event, EventError
from tidings.retry import RetryPolicy

__version__ = "0.1.0"

__all__ = ["Bus", "Event", "EventError", "RetryPolicy", "Subscription", "__version__"]
