"""PostgreSQL transport: a durable message queue in plain tables, woken by LISTEN/NOTIFY.

Why tables and not NOTIFY alone: a NOTIFY sent while nobody listens is gone, and its payload
is limited to 8 kB. Here every message is a row, so it survives a crash, a dropped connection
or a restart of the consumer; NOTIFY only wakes consumers early and a poll at ``poll_interval``
covers any lost notification.

Layout, all in one schema (``?schema=``, default ``tidings_queue``; the event store keeps its
own tables elsewhere):

- ``messages``: one row per published event (body kept as the exact encoded bytes).
- ``subscriptions``: every durable consumer (a group, or one broadcast subscriber) with the
  POSIX regex of its glob pattern, so a publish can match it inside PostgreSQL.
- ``deliveries``: one row per (subscription, message) still to be handled. The row is created
  *at publish time* in the same statement that inserts the message (fan-out on write). A
  per-subscription cursor over ``messages.id`` would be cheaper to write but is unsafe:
  sequence values are not committed in order, so a cursor can step past a row that commits
  later and lose it. A delivery row cannot be skipped; ack deletes it.
- ``dead_letters``: per subscription, with the error and attempt count; replay re-queues them.

Claims lease rows (``lease_until = now() + ack_wait``, renewed while the handler runs); an
expired lease is claimable again, which is the redelivery after a consumer crash. Claims of one
subscription are serialised by a transaction advisory lock and skip every key that still has a
row leased by another consumer, so two members of a group never work on the same key at once and
a key's messages are handed out in publish order (a consumer may take more of a key it already
holds: its Dispatcher runs them in order behind the first). Acks are buffered and deleted in
batches.
"""

from tidings.transports.postgres.consumer import PostgresSubscription
from tidings.transports.postgres.patterns import glob_to_regex
from tidings.transports.postgres.transport import PostgresTransport

__all__ = ["PostgresSubscription", "PostgresTransport", "glob_to_regex"]
