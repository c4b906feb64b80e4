"""Redis transport: Streams with consumer groups (durable), or pub/sub (fire-and-forget).

Streams mode (the default) keeps every event of a namespace in ONE stream, ``<prefix>:events``.
One stream gives a single total order, so events of one key arrive in publish order however
many types they span; per-type streams would need a merge on the consumer side to keep that.
Each subscription is a consumer group on that stream (members of a tidings group share it; a
broadcast subscription owns one alone), patterns are filtered exactly with ``tidings.topics``
on the entry's type (non-matching entries are acked at once, without decoding), and acks go
out in batches (XACK with many ids) after the shared ``Dispatcher`` settled each message.

An entry has ONE field: its name is the event type, its value the CloudEvents JSON body. The
type is readable without decoding the body, and one field instead of two (``type``, ``event``)
makes redis-py's reply parsing, the consumer's main cost, about 30% cheaper.

A message taken by a consumer that died stays in the group's pending list; every member runs
XAUTOCLAIM for entries idle longer than ``ack_wait`` and delivers them again. Messages this
process still holds (queued, running, retrying) are kept fresh with ``XCLAIM ... JUSTID`` so a
slow handler is not mistaken for a dead one. Dead letters go to ``<prefix>:dlq:<name>``.

URL: ``redis://[:password@]host:port/db?prefix=tidings&mode=streams&maxlen=100000``
(``rediss://`` for TLS). ``maxlen`` trims the stream approximately (XADD MAXLEN ~).
"""

from tidings.transports.redis.pubsub import RedisPubSubSubscription
from tidings.transports.redis.streams import RedisStreamSubscription
from tidings.transports.redis.transport import RedisTransport

__all__ = ["RedisPubSubSubscription", "RedisStreamSubscription", "RedisTransport"]
