"""The transactional outbox: emit events after the commit, never before, never lost.

::

    from tidings.outbox import Outbox, Relay

    outbox = Outbox()
    with conn.transaction():                      # the application's own transaction
        conn.execute("INSERT INTO links ...")
        outbox.add(conn, PaymentLinkCreated(...))  # same transaction: both commit or neither

    relay = Relay("postgresql://app@db/app", "kafka://broker:9092").start()

``Outbox`` (``writer.py``) writes events into the ``tidings_outbox`` table through the caller's
connection or SQLAlchemy session; ``Relay`` (``relay.py``) publishes committed rows to a Bus,
an event store, a transport or publisher, in order per key, at least once, each event keeping
its id. The table comes from ``tidings migrate`` or, in an Alembic project,
``tidings.outbox.schema.upgrade(op)``. See docs/outbox.md.
"""

from tidings.outbox.relay import Relay, RelayStats
from tidings.outbox.writer import Outbox, OutboxError

__all__ = ["Outbox", "OutboxError", "Relay", "RelayStats"]
