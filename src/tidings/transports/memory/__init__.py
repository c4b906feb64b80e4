"""The in-process transport: the Transport protocol without a server.

It exists so code written against a broker runs unchanged in tests and single-process
deployments, with the same consumer semantics (the shared Dispatcher: bounded in-flight, order
per key, retries, dead letters, ack after success). ``memory://name`` names a broker shared by
every MemoryTransport of the process with that URL, on any event loop, so two "services" in one
test talk to each other; bare ``memory://`` gives a private broker.

Each subscription (or group member) owns a bounded inbox: a publisher waits while the inbox is
full (backpressure) instead of growing memory. Members of a group share a name; an event goes
to one member, chosen by its key (so one key stays with one member and in order) or round-robin
when it has none. A member closed without acking hands what it had taken back to the group after
``ack_wait``; what it had not yet taken goes back at once. Nothing survives the process
(``persistent=False``), and a group lives only while it has a member.

Isolation without a codec on the hot path: a handler gets its own copy of the event, equal to
what ``decode(encode(event))`` gives on a real broker, so it can neither see the publisher's
later changes nor change what another subscriber (or a redelivery) sees. Publish takes a private
snapshot and every delivery a copy of it; when the payload is plain JSON values (str, int, bool,
finite float, None, dicts with str keys, lists) and the envelope already is what decoding would
build, that copy is a struct copy plus a copy of the dicts and lists (several times cheaper
than the JSON round trip). Anything else (bytes, tuples, nested structs, datetimes in
``data``, a typed field whose value does not have its declared type, ...) is encoded on publish
and decoded per delivery, exactly as before. The JSON body is encoded from the snapshot only
when something needs it (a dead letter), so dead letters still keep the exact body.

The modules: ``transport`` (MemoryTransport: options, lifecycle, publish, subscribe, health, dead
letters), ``consumer`` (MemorySubscription), ``broker`` (groups, routing, the shared registry),
``messages`` (a published message and a delivery of it), ``snapshot`` (the isolating copies).
"""

from tidings.transports.memory.consumer import MemorySubscription
from tidings.transports.memory.transport import MemoryTransport

__all__ = ["MemorySubscription", "MemoryTransport"]
