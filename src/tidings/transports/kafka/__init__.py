"""Kafka transport (Kafka, Redpanda, Tansu): keyed records, consumer groups, committed offsets.

URL: ``kafka://host:port[,host2:port2][?prefix=myapp.&topic=events&topic_per_type=false]``.

Security. ``kafkas://`` is TLS (the broker's certificate verified against the system's trust
store or ``ssl_cafile``; ``ssl_certfile``/``ssl_keyfile`` for mutual TLS); a user and password
in the URL add SASL (``sasl_mechanism`` PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512). An explicit
``security_protocol`` must agree with both, so credentials and certificates are never unused.

Topics. By default a namespace is one topic, ``<prefix><topic>`` (``myapp.events``), and every
subscription reads it and filters by type. With ``topic_per_type=true`` each event type gets its
own topic ``<prefix><type>`` (as the Redpanda publisher of seed 004 did with its topic prefix);
a pattern subscription then subscribes to a regex of topic names and filters exactly with
``tidings.topics``. Dead letters of subscription ``name`` go to ``<prefix>dlq.<name>``. Topics are
created on first use with ``partitions`` partitions (DLQs with one, to keep them in order).

Order. The record key is ``event.key`` (aggregate id, else subject), so one key lives in one
partition and keeps its order; events without a key are keyed by their type (ordered per type).

Publishing uses ``acks=all`` and returns once the broker acknowledged; ``publish_many`` builds
one record batch per partition, sends them all, then waits for every ack (a failed batch and the
later ones of its partition are sent again, so order holds, duplicates are possible, nothing is
reported as published that was not). The
idempotent producer is off by default because Tansu 0.6 rejects ``InitProducerId``; turn it on
with ``idempotent=true`` on Kafka or Redpanda.

Consuming. A subscription is one consumer in group ``<prefix><name>`` where ``name`` is
``subscription_name(pattern, group)`` (unique for broadcast subscriptions, shared by a group).
Auto-commit is off: the shared Dispatcher may finish messages out of order across keys, so each
partition tracks the offsets it handed out and commits only up to the lowest one not yet acked.
A member that dies therefore leaves its unfinished records uncommitted, and the group rebalance
gives them to the remaining members (after ``LeaveGroup`` at once; after a crash when the
session times out: ``session_timeout``, by default ``ack_wait`` kept within 6-10 s). Kafka has
no per-message redelivery for a live but stuck consumer: ``ack_wait`` only bounds crash
recovery. A hole in a partition's offsets is fetched again for ``gap_wait`` seconds before it
is passed over (a broker may expose a later batch before an earlier concurrent one).
``start="new"`` begins at the end offsets seen when ``subscribe`` ran (topics that
appear later from their start); ``"earliest"`` from the oldest retained record. A durable
group resumes from its commits. A newly assigned partition is paused until it is positioned
and registered (aiokafka fetches it before the assignment callback has run), and a fetched
record of a partition not registered yet is fetched again, never dropped.

Dead letters are records in the DLQ topic with the error in headers; ``dead_letters`` reads them
from a cursor (the committed offset of group ``<prefix>dlq-cursor.<name>``) and
``replay_dead_letters`` publishes them to their original topic, addressed to that subscription
only (header ``tidings-replay-for``), then moves the cursor past them.
"""

from tidings.transports.kafka.consumer import KafkaSubscription
from tidings.transports.kafka.offsets import _Partition as _Partition  # used by the tests
from tidings.transports.kafka.topics import topic_regex
from tidings.transports.kafka.transport import KafkaTransport

__all__ = ["KafkaSubscription", "KafkaTransport", "topic_regex"]
