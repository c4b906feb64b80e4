"""Events over a transport: the Bus API unchanged, a consumer group, a dead letter and replay.

Three buses share the in-process broker ``memory://shop`` as three services would share Redis or
NATS: two billing workers form one group (each order is billed once), an audit service gets
every event. Swap the URL for ``redis://...`` or ``nats://...`` and nothing else changes.

Run it with `python examples/transport_memory.py` in the project's virtualenv.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from tidings import Bus, Event, RetryPolicy


class OrderPlaced(Event, type="order.placed"):
    order_id: str
    amount: float


class OrderShipped(Event, type="order.shipped"):
    order_id: str


URL = "memory://shop"


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)  # keep the demo's output to what it prints
    shop = Bus(transport=URL)
    billing = [Bus(transport=URL, group="billing") for _ in range(2)]
    audit = Bus(transport=URL)

    billed: Counter[str] = Counter()
    by_worker: Counter[int] = Counter()
    audited: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    for n, worker in enumerate(billing):

        def bill(event: OrderPlaced, n: int = n) -> None:
            if event.amount < 0:
                raise ValueError(f"order {event.order_id}: negative amount {event.amount}")
            with lock:
                billed[event.order_id] += 1
                by_worker[n] += 1

        worker.subscribe("order.placed", bill, retry=RetryPolicy(max_retries=1, initial_delay=0.01))

    @audit.subscribe("order.*")
    async def record(event: Event) -> None:  # coroutine handlers work the same way
        with lock:
            audited.append(event.type)
            if len(audited) == 41:
                done.set()

    for i in range(20):
        shop.publish(OrderPlaced(order_id=f"o{i}", amount=10.0 + i, aggregate_id=f"o{i}"))
        shop.publish(OrderShipped(order_id=f"o{i}", aggregate_id=f"o{i}"))
    shop.publish(OrderPlaced(order_id="bad", amount=-1.0, aggregate_id="bad"))
    done.wait(30)
    for _ in range(3000):  # the billing group may still be working when the audit is done
        with lock:
            if len(billed) == 20:
                break
        threading.Event().wait(0.01)

    print(f"audit saw {len(audited)} events")
    print(f"billed {len(billed)} orders, each once: {set(billed.values()) == {1}}")
    print(f"both billing workers took part: {all(by_worker[n] > 0 for n in range(2))}")

    # The failing order went to the billing group's dead-letter queue in the transport.
    transport = billing[0].transport
    sub = billing[0].subscriptions()[0].remote
    assert transport is not None and sub is not None
    dead = []
    for _ in range(3000):  # the bad order may still be in its retry
        dead = billing[0].run_on_transport(transport.dead_letters(sub.name))
        if dead:
            break
        threading.Event().wait(0.01)
    for letter in dead:
        print(f"dead letter: {letter.event_type} after {letter.attempts} attempts: {letter.error}")

    for bus in (shop, *billing, audit):
        report = bus.close(timeout=2.0)
        if not report.drained:
            print("not drained:", report.summary())
    print("closed: every bus drained")


if __name__ == "__main__":
    main()
