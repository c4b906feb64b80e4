"""NATS transport: JetStream durable pull consumers (default), or core NATS (fire-and-forget).

JetStream mode keeps every event of a namespace in ONE stream (``?stream=``, default
``TIDINGS``) bound to ``<prefix>.>``; an event of type ``a.b.c`` travels on subject
``<prefix>.a.b.c`` with its id as ``Nats-Msg-Id``, so a publish retried after a lost PubAck is
stored once (JetStream de-duplication). ``publish`` returns after the PubAck (the server stored
the event); ``publish_many`` pipelines the PubAcks.

A subscription is a pull consumer whose filter subject is the pattern mapped onto NATS
wildcards (``*`` -> ``*``; ``**`` -> ``>``). NATS ``>`` needs at least one token while tidings
``**`` also matches zero segments (``a.**`` matches ``a``), so a pattern ending in ``.**`` uses
the next broader filter and every subscription post-filters exactly with ``tidings.topics`` on
the subject (non-matching messages are acked without being decoded). One consumer per
subscription keeps the stream order, so events of one key arrive in publish order whatever
types they span; the shared ``Dispatcher`` keeps that order per key while keys run in parallel.

Members of a group share one durable consumer (``subscription_name``); a broadcast subscription
owns its own (deleted on close, or by the server after ``inactive_threshold`` if the process
died). ``ack_wait`` is the consumer's AckWait and ``max_in_flight`` its MaxAckPending; pull
requests keep that many messages coming and each goes to the Dispatcher as it arrives. Messages
this process still holds (queued behind a key, running, retrying) get ``+WPI`` (in progress)
so a slow handler is not mistaken for a dead one; a member that dies stops doing that and its
messages go to another member after AckWait. Dead letters go to a second stream
(``<STREAM>_DLQ``, subjects ``<prefix>_dlq.<subscription name>``).

Core mode (``?mode=core``) uses plain subjects and queue groups: no persistence, no
redelivery, dead letters kept in memory only.

URL: ``nats://[user:pass@]host:port?stream=TIDINGS&prefix=tidings&mode=jetstream``
(``tls://`` for TLS).
"""

from tidings.transports.nats.core import NatsCoreSubscription
from tidings.transports.nats.jetstream import NatsJetStreamSubscription
from tidings.transports.nats.subjects import filter_subject, subject_for_type, type_for_subject
from tidings.transports.nats.transport import NatsTransport

__all__ = [
    "NatsCoreSubscription",
    "NatsJetStreamSubscription",
    "NatsTransport",
    "filter_subject",
    "subject_for_type",
    "type_for_subject",
]
