"""Event sourcing on the embedded SQLite store: an aggregate, optimistic concurrency, a catch-up
projection with a durable checkpoint, store + bus, and replay.

Run it with `python examples/event_sourcing.py` in the project's virtualenv.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tidings import Bus, Event
from tidings.store import ConcurrencyError, Criteria, EventStore, Recorded, open_store
from tidings.store.replay import replay


class AccountOpened(Event, type="account.opened"):
    owner: str


class MoneyDeposited(Event, type="account.deposited"):
    amount: int


class MoneyWithdrawn(Event, type="account.withdrawn"):
    amount: int


@dataclass
class Account:
    """The aggregate: its state is nothing but its events folded in order."""

    owner: str = ""
    balance: int = 0
    version: int = 0

    def apply(self, rec: Recorded) -> None:
        e = rec.event
        if isinstance(e, AccountOpened):
            self.owner = e.owner
        elif isinstance(e, MoneyDeposited):
            self.balance += e.amount
        elif isinstance(e, MoneyWithdrawn):
            self.balance -= e.amount
        self.version = rec.version or self.version

    @classmethod
    def load(cls, store: EventStore, stream: str) -> Account:
        account = cls()
        for rec in store.load_stream(stream):
            account.apply(rec)
        return account


def withdraw(store: EventStore, stream: str, amount: int) -> None:
    """A command: decide on the current state, append only if nobody wrote in between."""
    account = Account.load(store, stream)
    if amount > account.balance:
        raise ValueError(f"insufficient funds: balance {account.balance}, asked {amount}")
    store.append(MoneyWithdrawn(amount=amount), stream=stream, expected_version=account.version)


@dataclass
class Balances:
    """A read model kept by a catch-up subscription."""

    by_stream: dict[str, int] = field(default_factory=dict)

    def __call__(self, rec: Recorded) -> None:
        sign = -1 if isinstance(rec.event, MoneyWithdrawn) else 1
        amount = getattr(rec.event, "amount", 0)
        stream = rec.stream or "?"
        self.by_stream[stream] = self.by_stream.get(stream, 0) + sign * amount


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'events.db'}"

        bus = Bus()
        notified: list[str] = []
        bus.subscribe("account.*", lambda e: notified.append(e.type))
        store = open_store(url, publish=bus.publish)  # store + bus: published after commit

        store.append(AccountOpened(owner="ada"), stream="account-1", expected_version=0)
        store.append([MoneyDeposited(amount=100), MoneyDeposited(amount=50)], stream="account-1")
        withdraw(store, "account-1", 30)
        account = Account.load(store, "account-1")
        print(f"rebuilt: owner={account.owner} balance={account.balance} v{account.version}")

        # optimistic concurrency: a writer that read version 2 loses to the one that wrote v4
        try:
            store.append(MoneyWithdrawn(amount=500), stream="account-1", expected_version=2)
        except ConcurrencyError as exc:
            print(f"conflict: expected v{exc.expected}, stream at v{exc.actual}")

        # a projection: catches up on history, then follows live; its checkpoint is durable
        balances = Balances()
        sub = store.subscribe(Criteria(types=("account.**",)), balances, name="balances")
        store.append(MoneyDeposited(amount=5), stream="account-1")
        last = store.read_all(limit=100)[-1].position
        while sub.position < last:
            time.sleep(0.01)
        sub.stop()
        print(f"projection: {balances.by_stream} checkpoint={store.checkpoint('balances')}")

        # after a restart the same name resumes after its checkpoint: nothing twice
        store.append(MoneyDeposited(amount=1), stream="account-1")
        store.close()
        store = open_store(url)
        sub = store.subscribe(Criteria(types=("account.**",)), balances, name="balances")
        last = store.read_all(limit=100)[-1].position
        while sub.position < last:
            time.sleep(0.01)
        sub.stop()
        print(f"resumed: {balances.by_stream}")

        # replay: rebuild a fresh read model from the whole history, with progress
        fresh = Balances()
        done = replay(
            store,
            fresh,
            progress=lambda n, total: print(f"replay {n}/{total}"),
            records=True,
        )
        print(f"replayed {done} events: {fresh.by_stream}")
        print(f"bus saw {len(notified)} events after commit")
        store.close()
        bus.close()


if __name__ == "__main__":
    main()
