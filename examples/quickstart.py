"""Quick start: typed events through the in-process Bus, with a retry and a dead letter.

Run it with `make run` (or `python examples/quickstart.py` in the project's virtualenv).
"""

from __future__ import annotations

import logging

from tidings import Bus, Event, RetryPolicy


class PaymentLinkCreated(Event, type="payment_link.created"):
    payment_link_id: str
    amount: float
    currency: str = "USD"


class PaymentLinkArchived(Event, type="payment_link.archived"):
    payment_link_id: str


class ReceiptSent(Event, type="receipt.sent"):
    payment_link_id: str


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)  # keep the demo's output to what it prints
    bus = Bus(mode="async", workers=4, buffer_size=1000)
    audit: list[str] = []

    @bus.subscribe("payment_link.*")
    def record(event: Event) -> None:
        audit.append(f"{event.type} {event.aggregate_id}")

    @bus.subscribe("payment_link.created", retry=RetryPolicy(max_retries=2, initial_delay=0.01))
    def send_receipt(event: PaymentLinkCreated) -> None:
        # Publishing from a handler fills correlation and causation automatically.
        bus.publish(ReceiptSent(payment_link_id=event.payment_link_id))

    @bus.subscribe("payment_link.archived", name="flaky-webhook")
    def always_fails(event: Event) -> None:
        raise ConnectionError("webhook receiver is down")

    receipts: list[ReceiptSent] = []
    bus.subscribe("receipt.sent", receipts.append)

    for i in range(3):
        bus.publish(
            PaymentLinkCreated(payment_link_id=f"pl_{i}", amount=10.0 * i, aggregate_id=f"pl_{i}")
        )
    bus.publish(PaymentLinkArchived(payment_link_id="pl_0", aggregate_id="pl_0"))

    report = bus.close(timeout=5)
    print(f"closed: {report.summary()}")
    print(f"audit trail: {len(audit)} events")
    for line in audit:
        print(f"  {line}")
    print(f"receipts: {len(receipts)}, each caused by its payment link event:")
    for receipt in receipts:
        print(f"  {receipt.payment_link_id} causation={receipt.causation_id}")
    for letter in bus.dead_letters.list():
        print(f"dead letter: {letter.event.type} -> {letter.handler}: {letter.error}")
    print("JSON (structured-mode CloudEvents):")
    print(PaymentLinkCreated(payment_link_id="pl_9", amount=1.5).to_json().decode())


if __name__ == "__main__":
    main()
