"""RabbitMQ transport: a durable topic exchange, one queue per subscription, publisher confirms.

Events are published persistent (delivery_mode=2) to a durable topic exchange with the event
type as routing key, and ``publish`` returns only after the broker's publisher confirm, which
for a durable queue means the message is stored. A subscription is a queue bound with the
pattern mapped onto AMQP wildcards (``*`` -> ``*``, ``**`` -> ``#``) and post-filtered with
``tidings.topics``, so glob semantics are exactly those of every other backend:

- a group shares one durable queue named after ``subscription_name(pattern, group)`` (a quorum
  queue by default: replicated, and it counts deliveries in ``x-delivery-count``); RabbitMQ
  hands each message to one consumer of the queue;
- a broadcast subscription owns an exclusive auto-delete queue that dies with it.

Prefetch equals ``max_in_flight``; a message is acked after the shared Dispatcher acked it and
nacked (requeued) when it says so. When a consumer's channel or connection goes away the broker
requeues everything it had not acked, which is how a crashed member's messages reach the others.
Dead letters go to a durable queue ``<prefix>.dlq.<name>`` that ``dead_letters`` reads without
consuming and ``replay_dead_letters`` moves back into the subscription's queue.

The connection is aio-pika's robust connection: it reconnects by itself and restores channels,
queues, bindings and consumers; ``publish`` waits for the reconnect and publishes again (at
least once: a lost confirm can mean a duplicate, never a loss).
"""

from tidings.transports.rabbitmq.consumer import RabbitMQSubscription
from tidings.transports.rabbitmq.routing import binding_key
from tidings.transports.rabbitmq.transport import RabbitMQTransport
from tidings.urls import redact_url

__all__ = ["RabbitMQSubscription", "RabbitMQTransport", "binding_key", "redact_url"]
