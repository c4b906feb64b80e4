"""RetryScheduler: the bus's own retries of failed handler attempts, on its clock.

After a failed attempt the scheduler picks the policy (the subscription's ``retry``, else the
bus default), and if it allows another attempt, schedules it on the clock: a delivery waiting
out its backoff never holds a worker or the publisher. It also keeps what ``drain`` and
``close`` need to know: which retries are scheduled and which are running right now.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tidings.clock import Clock, Timer
from tidings.delivery import HandlerDelivery
from tidings.retry import RetryPolicy

__all__ = ["RetryScheduler"]

log = logging.getLogger("tidings.bus")

Requeue = Callable[[HandlerDelivery], None]


class RetryScheduler:
    """Decides whether and when a failed delivery is tried again, and schedules it.

    A due retry either runs in the clock's timer thread (``run_inline``: inline mode) or is put
    back on the queue of the worker that owns its key (``requeue``: async mode).

    Scheduled retries (not yet due) and inline retries running now (by the thread running
    them) are tracked; every move between "scheduled", "running" and a worker's queue bumps a
    generation, so ``drain()`` can tell a quiet moment from one it happened to miss.
    """

    def __init__(
        self,
        default: RetryPolicy | None,
        clock: Clock,
        run_inline: Callable[[HandlerDelivery], None],
    ) -> None:
        self.default = default
        self._clock = clock
        self._run_inline = run_inline
        self._lock = threading.Lock()
        self._timers: dict[HandlerDelivery, Timer | None] = {}
        self._firing: dict[HandlerDelivery, int] = {}
        self._generation = 0
        self._stopped = False

    # --- deciding ---------------------------------------------------------------------------

    def policy_for(self, delivery: HandlerDelivery) -> RetryPolicy | None:
        own: RetryPolicy | None = getattr(delivery.subscription, "retry", None)
        return own if own is not None else self.default

    def next_delay(self, delivery: HandlerDelivery, error: BaseException) -> float | None:
        """Seconds until the next attempt, or None when the failure is final."""
        policy = self.policy_for(delivery)
        if policy is None or not policy.should_retry(delivery.attempts, error):
            return None
        return policy.delay(delivery.attempts)

    # --- scheduling ---------------------------------------------------------------------------

    def schedule(
        self, delivery: HandlerDelivery, delay: float, requeue: Requeue | None = None
    ) -> None:
        """Run the next attempt of ``delivery`` after ``delay``, unless ``stop()`` comes first.

        The timer's entry leaves the schedule only when the attempt starts (under the lock, so
        ``stop()`` either cancels the retry or sees it running, never neither); an inline
        attempt is then "running" until it ends, a worker's is in that worker's queue.
        """

        def fire() -> None:
            with self._lock:
                if delivery not in self._timers:
                    return  # cancelled by stop()
                del self._timers[delivery]
                self._generation += 1
                if requeue is not None:
                    requeue(delivery)
                    return
                self._firing[delivery] = threading.get_ident()
            try:
                self._run_inline(delivery)
            finally:
                with self._lock:
                    self._firing.pop(delivery, None)
                    self._generation += 1

        with self._lock:
            if self._stopped:
                log.warning(
                    "handler %s: retry of event %s not scheduled, the bus is closed "
                    "(close() reported this attempt as still running)",
                    delivery.handler,
                    delivery.event.id,
                )
                return
            self._timers[delivery] = None
            self._generation += 1
        timer = self._clock.call_later(delay, fire)
        with self._lock:
            if delivery in self._timers:
                self._timers[delivery] = timer

    # --- what drain() and close() ask -------------------------------------------------------

    @property
    def pending(self) -> int:
        """Retries scheduled and not yet due."""
        with self._lock:
            return len(self._timers)

    def quiet(self) -> int | None:
        """The current generation if no retry is scheduled or running (a retry running in
        the calling thread, which may be the one calling close(), does not count); else None."""
        me = threading.get_ident()
        with self._lock:
            if self._timers or any(t != me for t in self._firing.values()):
                return None
            return self._generation

    def unchanged_since(self, generation: int) -> bool:
        """Nothing moved between a timer, a running retry and a queue since ``quiet()``."""
        with self._lock:
            return generation == self._generation and not self._timers

    def stop(self) -> tuple[list[HandlerDelivery], int]:
        """Schedule nothing from now on; cancel what is scheduled.

        Returns the cancelled deliveries and how many retries are running in other threads.
        """
        me = threading.get_ident()
        with self._lock:
            self._stopped = True
            timers = dict(self._timers)
            self._timers.clear()
            running = sum(1 for t in self._firing.values() if t != me)
        for timer in timers.values():
            if timer is not None:
                timer.cancel()
        return list(timers), running
