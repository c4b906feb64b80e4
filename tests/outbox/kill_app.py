"""An application process for the SIGKILL test: it commits business rows with their events and
runs a (slow) relay that records what it publishes in table ``received``; the test kills it.

``python -m tests.outbox.kill_app URL EVENTS KEYS`` prints ``committed N`` after each commit
and ``all committed`` at the end, then keeps relaying until killed.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tests.outbox.conftest import connect
from tidings.event import Event
from tidings.outbox import Outbox, Relay


class ReceivedTable:
    """A relay target that appends each event to ``received`` (one commit per event)."""

    def __init__(self, url: str, relay: str, delay: float = 0.0) -> None:
        self.url = url
        self.relay = relay
        self.delay = delay
        self.conn: Any = None

    def __call__(self, event: Event) -> None:
        if self.conn is None:
            self.conn = connect(self.url)
        mark = "?" if self.url.startswith("sqlite") else "%s"
        self.conn.execute(
            f"INSERT INTO received (relay, event_id, key, seq) VALUES ({mark}, {mark}, {mark}, "
            f"{mark})",
            (self.relay, event.id, event.aggregate_id, event.data["seq"]),
        )
        self.conn.commit()
        if self.delay:
            time.sleep(self.delay)


def main(url: str, events: int, keys: int) -> None:
    relay = Relay(
        url,
        ReceivedTable(url, "killed", delay=0.003),
        batch_size=20,
        lease=3.0,
        publish_timeout=2.0,
        poll_interval=0.05,
    ).start()
    outbox = Outbox()
    conn = connect(url)
    mark = "?" if url.startswith("sqlite") else "%s"
    seqs = [0] * keys
    for n in range(events):
        k = n % keys
        seqs[k] += 1
        conn.execute(f"INSERT INTO links (id, amount) VALUES ({mark}, {mark})", (f"l{n}", n))
        outbox.add(conn, Event(type="outbox.kill.seq", aggregate_id=f"k{k}", data={"seq": seqs[k]}))
        if n % 10 == 9:
            conn.commit()
            print(f"committed {n + 1}", flush=True)
    conn.commit()
    print("all committed", flush=True)
    while relay.running:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
