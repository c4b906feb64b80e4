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

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]

from tidings.event import Event, decode, encode
from tidings.topics import Pattern, compile_pattern, memoized
from tidings.transport import (
    AsyncHandler,
    Capabilities,
    DeadMessage,
    Inbound,
    SubscribeOptions,
    TransportError,
    TransportHealth,
    TransportState,
    TransportStats,
    TransportSubscription,
    subscription_name,
)
from tidings.transports.common import ConnectionReporter, Options, dead_letter_name
from tidings.transports.dispatch import Dispatcher
from tidings.urls import redact_url

__all__ = ["KafkaSubscription", "KafkaTransport", "topic_regex"]

log = logging.getLogger("tidings.transports.kafka")

CONTENT_TYPE = b"application/cloudevents+json"
H_TYPE = "tidings-type"
H_REPLAY = "tidings-replay-for"
H_ERROR = "tidings-error"
H_ATTEMPTS = "tidings-attempts"
H_FAILED_AT = "tidings-failed-at"
H_EVENT_ID = "tidings-event-id"
H_SUBSCRIPTION = "tidings-subscription"
H_TOPIC = "tidings-topic"
H_KEY = "tidings-key"

_LEGAL_TOPIC = re.compile(r"[A-Za-z0-9._-]*")
_MAX_TOPIC = 249
_TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
_ERROR_HEADER_MAX = 4000
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TLS_OPTIONS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_context")
# Every option a kafka URL's query or open_transport's keywords may give.
_OPTIONS = frozenset({
    "prefix", "topic", "topic_per_type", "partitions", "replication", "idempotent",
    "connect_timeout", "publish_timeout", "linger_ms", "max_batch_size", "client_id",
    "heartbeat_interval", "session_timeout", "metadata_max_age", "fetch_max_wait",
    "fetch_min_bytes",
    "commit_interval", "revoke_drain", "gap_wait", "on_error",
    "security_protocol", "sasl_mechanism", *_TLS_OPTIONS,
})  # fmt: skip
# What connecting may raise: aiokafka's SCRAM client fails with KeyError/ValueError when the
# broker answers a refusal ("e=unknown-user") instead of a server signature.
_CONNECT_ERRORS = (TimeoutError, KafkaError, OSError, KeyError, ValueError)
_OPT = Options("kafka")


def topic_regex(prefix: str, pattern: Pattern, exclude: str | None = None) -> str:
    """A regex of the topic names ``<prefix><type>`` whose type matches ``pattern``.

    ``*`` is one dot-free segment, ``**`` zero or more (the dot next to it goes with it), so
    ``a.**.z`` matches ``a.z``. Records are still filtered exactly with ``pattern.matches``.
    """
    segs = pattern.segments
    parts: list[str] = []
    glue = ""  # the separator owed before the next segment
    for i, seg in enumerate(segs):
        if seg == "**":
            if len(segs) == 1:
                parts.append(r"[^.]+(?:\.[^.]+)*")
            elif i == 0:
                parts.append(r"(?:[^.]+\.)*")
                glue = ""
                continue
            else:
                parts.append(r"(?:\.[^.]+)*")
            glue = r"\."
            continue
        parts.append(glue + (r"[^.]+" if seg == "*" else re.escape(seg)))
        glue = r"\."
    guard = f"(?!{re.escape(exclude)})" if exclude else ""
    return "^" + re.escape(prefix) + guard + "".join(parts) + "$"


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", "replace") if value is not None else None
    return None


def _parse_netloc(netloc: str) -> tuple[list[str], str | None, str | None]:
    """``[user:pass@]host:port[,host:port]`` -> (["host:port", ...], user, password)."""
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, secret = (unquote(x) for x in userinfo.partition(":"))
        username, password = user or None, secret  # "@host" names no user
    hosts: list[str] = []
    for raw in netloc.split(","):
        item = raw.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "9092"
        if not host or not port.isdigit():
            raise TransportError(
                f"kafka URL: broker {item!r} is not host:port (e.g. kafka://localhost:9092)"
            )
        hosts.append(f"{host}:{port}")
    if not hosts:
        raise TransportError("kafka URL names no broker; expected kafka://host:port")
    return hosts, username, password


def _check_topic(topic: str, what: str) -> None:
    if not topic or len(topic) > _MAX_TOPIC or not _LEGAL_TOPIC.fullmatch(topic):
        raise TransportError(
            f"kafka: {what} gives the topic name {topic!r}, which Kafka refuses (1-249 "
            "characters of A-Z a-z 0-9 . _ -); choose another prefix/topic or event type"
        )


def _ssl_context(opt: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context: the given ``ssl_context``, else one verifying the broker's certificate
    against ``ssl_cafile`` (default: the system's trust store), with an optional client
    certificate for brokers that require mutual TLS."""
    given = opt.get("ssl_context")
    files = [name for name in _TLS_OPTIONS[:-1] if opt.get(name) is not None]
    if given is not None:
        if not isinstance(given, ssl.SSLContext):
            raise TransportError(
                f"kafka option ssl_context: expected an ssl.SSLContext, got {type(given).__name__}"
            )
        if files:
            raise TransportError(
                f"kafka: ssl_context and {', '.join(files)} were both given; configure the "
                "certificates in the context, or drop ssl_context"
            )
        return given
    cafile = opt.get("ssl_cafile")
    certfile, keyfile = opt.get("ssl_certfile"), opt.get("ssl_keyfile")
    try:
        context = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    except (OSError, ValueError) as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else f"not PEM ({exc})"
        raise TransportError(
            f"kafka option ssl_cafile: cannot load the CA certificates from {cafile!r} "
            f"({reason}); give the path of the broker's CA bundle in PEM"
        ) from None
    if keyfile is not None and certfile is None:
        raise TransportError(
            "kafka option ssl_keyfile: given without ssl_certfile; give the client "
            "certificate (PEM) too"
        )
    if certfile is not None:
        password = opt.get("ssl_password")
        try:
            context.load_cert_chain(
                str(certfile),
                None if keyfile is None else str(keyfile),
                None if password is None else str(password),
            )
        except (OSError, ValueError) as exc:
            reason = "no such file" if isinstance(exc, FileNotFoundError) else f"{exc}"
            raise TransportError(
                f"kafka options ssl_certfile/ssl_keyfile: cannot load the client certificate "
                f"{certfile!r} with key {keyfile or certfile!r} ({reason}); give PEM files "
                "(and ssl_password if the key is encrypted)"
            ) from None
    return context


def _security(
    tls: bool, username: str | None, password: str | None, opt: dict[str, Any]
) -> dict[str, Any]:
    """aiokafka's security settings from the scheme, the URL's user and the options.

    ``kafkas://`` means TLS; a user in the URL means SASL. An explicit ``security_protocol``
    must agree with both, so that credentials or certificates are never silently unused.
    """
    sasl = username is not None
    default = ("SASL_" if sasl else "") + ("SSL" if tls else "PLAINTEXT")
    protocol = str(opt.get("security_protocol", default)).strip().upper()
    if protocol not in _PROTOCOLS:
        raise _OPT.error(
            "security_protocol", f"one of {', '.join(_PROTOCOLS)}", opt.get("security_protocol")
        )
    uses_tls = protocol.endswith("SSL")
    if tls and not uses_tls:
        raise TransportError(
            f"kafka: kafkas:// means TLS but security_protocol is {protocol}; use kafka:// "
            "for a plaintext connection, or SSL / SASL_SSL"
        )
    if protocol.startswith("SASL_") and not sasl:
        raise TransportError(
            f"kafka: security_protocol {protocol} needs a user and password in the URL: "
            "kafka://user:password@host:port (percent-encode special characters)"
        )
    if sasl and not protocol.startswith("SASL_"):
        raise TransportError(
            f"kafka: the URL has a user and password but security_protocol {protocol} does not "
            "send them; use SASL_PLAINTEXT or SASL_SSL, or remove them from the URL"
        )
    given_tls = [name for name in _TLS_OPTIONS if opt.get(name) is not None]
    if given_tls and not uses_tls:
        raise TransportError(
            f"kafka option {given_tls[0]}: only used with TLS; use a kafkas:// URL or "
            "security_protocol=SSL (SASL_SSL with a user)"
        )
    settings: dict[str, Any] = {"security_protocol": protocol}
    if sasl:
        mechanism = str(opt.get("sasl_mechanism", "PLAIN")).strip().upper()
        if mechanism not in _MECHANISMS:
            raise _OPT.error(
                "sasl_mechanism", f"one of {', '.join(_MECHANISMS)}", opt.get("sasl_mechanism")
            )
        settings.update(
            sasl_mechanism=mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password or "",
        )
    elif opt.get("sasl_mechanism") is not None:
        raise TransportError(
            "kafka option sasl_mechanism: given without a user and password in the URL "
            "(kafka://user:password@host:port)"
        )
    if uses_tls:
        settings["ssl_context"] = _ssl_context(opt)
    return settings


@dataclass(slots=True)
class _Out:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class _Partition:
    """Offsets handed to the dispatcher from one partition; commits stop at the first unacked."""

    __slots__ = ("committed", "done", "gap", "next", "pending", "revoked", "start")

    def __init__(self, committed: int | None) -> None:
        self.start: int | None = committed
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.next: int | None = None
        self.committed = committed
        self.revoked = False
        # (offset expected, monotonic time it was first found missing) while a gap is held
        self.gap: tuple[int, float] | None = None

    def expected(self) -> int | None:
        """The offset the next record should have, if known."""
        return self.next if self.next is not None else self.start

    def take(self, offset: int) -> None:
        self.pending.append(offset)
        self.next = offset + 1

    def ack(self, offset: int) -> None:
        self.done.add(offset)
        pending, done = self.pending, self.done
        while pending and pending[0] in done:
            done.discard(pending.popleft())

    def watermark(self) -> int | None:
        """The offset to commit: the first unacked one, or one past the last taken."""
        return self.pending[0] if self.pending else self.next


class KafkaTransport:
    """The Transport protocol over aiokafka; see the module docstring for the mapping."""

    capabilities = Capabilities(
        ordering=True, persistent=True, consumer_groups=True, replay=True, redelivery=True
    )

    def __init__(self, url: str, **options: Any) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("kafka", "kafkas"):
            raise TransportError(
                f"KafkaTransport needs a kafka:// or kafkas:// (TLS) URL, got scheme "
                f"{parts.scheme!r}"
            )
        hosts, username, password = _parse_netloc(parts.netloc)
        self.bootstrap = ",".join(hosts)
        self.url = redact_url(
            f"{scheme}://{'***@' if username else ''}{self.bootstrap}"
            + (f"?{parts.query}" if parts.query else "")
        )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        _OPT.unknown([*query, *options], _OPTIONS)
        opt = {**query, **options}
        self.prefix: str = str(opt.get("prefix", ""))
        self.topic_per_type = _OPT.boolean("topic_per_type", opt.get("topic_per_type", False))
        self.topic: str = self.prefix + str(opt.get("topic", "events"))
        _check_topic(self.topic if not self.topic_per_type else self.prefix + "x", "the prefix")
        self.partitions = int(_OPT.number("partitions", opt.get("partitions", 4), 1))
        self.replication = int(_OPT.number("replication", opt.get("replication", 1), -1))
        self.idempotent = _OPT.boolean("idempotent", opt.get("idempotent", False))
        self.connect_timeout = _OPT.number("connect_timeout", opt.get("connect_timeout", 5.0), 0.1)
        self.publish_timeout = _OPT.number("publish_timeout", opt.get("publish_timeout", 10.0), 0.1)
        self.linger_ms = int(_OPT.number("linger_ms", opt.get("linger_ms", 0), 0))
        self.max_batch_size = int(
            _OPT.number("max_batch_size", opt.get("max_batch_size", 262144), 1024)
        )
        self.client_id = str(opt.get("client_id", "tidings"))
        self.heartbeat_interval = _OPT.number(
            "heartbeat_interval", opt.get("heartbeat_interval", 0.5), 0.05
        )
        session = opt.get("session_timeout")
        self.session_timeout = (
            None if session is None else _OPT.number("session_timeout", session, 1)
        )
        default_age = 2.0 if self.topic_per_type else 300.0
        self.metadata_max_age = _OPT.number(
            "metadata_max_age", opt.get("metadata_max_age", default_age), 0.1
        )
        self.fetch_max_wait = _OPT.number("fetch_max_wait", opt.get("fetch_max_wait", 0.1), 0.01)
        self.fetch_min_bytes = int(_OPT.number("fetch_min_bytes", opt.get("fetch_min_bytes", 1), 1))
        self.commit_interval = _OPT.number("commit_interval", opt.get("commit_interval", 0.1), 0.0)
        self.gap_wait = _OPT.number("gap_wait", opt.get("gap_wait", 1.0), 0.0)
        drain = opt.get("revoke_drain")
        self.revoke_drain = None if drain is None else _OPT.number("revoke_drain", drain, 0)
        on_error = opt.get("on_error")
        if on_error is not None and not callable(on_error):
            raise TransportError("kafka option on_error: expected a callable(exc)")
        self.on_error: Callable[[BaseException], None] | None = on_error
        self._security = _security(scheme == "kafkas", username, password, opt)
        self.security_protocol: str = self._security["security_protocol"]
        self._producer: Any = None
        self._admin: Any = None
        self._link = ConnectionReporter(
            log,
            "kafka",
            self.bootstrap,
            on_error=self.on_error,
            state=TransportState.DISCONNECTED,
            render=str,
        )
        self._topics: dict[str, asyncio.Future[None]] = {}
        self._key_partitions: dict[str, tuple[dict[bytes, int], list[int]]] = {}
        self._subs: set[KafkaSubscription] = set()
        self.stats = TransportStats()  # read by exporters
        self._dlq_locks: dict[str, asyncio.Lock] = {}

    # ---- connection ------------------------------------------------------------------------

    def _where(self) -> str:
        return f"Kafka broker at {self.bootstrap}"

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "request_timeout_ms": int(max(self.publish_timeout, self.connect_timeout) * 1000),
            **self._security,
        }

    async def start(self) -> None:
        if self._producer is not None:
            return
        self._link.state = TransportState.CONNECTING
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=self.idempotent,
            linger_ms=self.linger_ms,
            max_batch_size=self.max_batch_size,
            **self._client_kwargs(),
        )
        admin = AIOKafkaAdminClient(**self._client_kwargs())
        try:
            await asyncio.wait_for(producer.start(), self.connect_timeout)
            await asyncio.wait_for(admin.start(), self.connect_timeout)
        except _CONNECT_ERRORS as exc:
            self._link.state = TransportState.DISCONNECTED
            reason = self._connect_failure(exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), 2)
            if "ssl_context" in self._security:
                reason = await self._tls_failure() or reason
            self._link.last_error = reason
            hint = "check the URL and that the broker is running"
            if "ssl_context" in self._security:
                hint += (
                    " and speaks TLS on this port (with the CA of ssl_cafile, and a client "
                    "certificate in ssl_certfile if it asks for one)"
                )
            raise TransportError(
                f"cannot connect to the {self._where()} within {self.connect_timeout:g}s "
                f"({reason}); {hint}"
            ) from exc
        self._producer, self._admin = producer, admin
        self._link.state = TransportState.CONNECTED
        self._link.last_error = None

    def _connect_failure(self, exc: BaseException) -> str:
        """Why connecting failed, in words (never the credentials)."""
        if isinstance(exc, TimeoutError):
            return "no answer"
        mechanism = self._security.get("sasl_mechanism")
        if isinstance(exc, (UnsupportedSaslMechanismError, AuthenticationMethodNotSupported)):
            return f"the broker does not accept SASL {mechanism}: set sasl_mechanism"
        if mechanism is not None and isinstance(
            exc, (KeyError, ValueError, SaslAuthenticationFailed, AuthenticationFailedError)
        ):
            return f"SASL {mechanism} authentication failed: check the user and password"
        if isinstance(exc, ssl.SSLError):
            return f"TLS handshake failed: {exc}"
        return f"{exc}"

    async def _tls_failure(self) -> str | None:
        """Why a TLS handshake with the first broker fails, if it does.

        aiokafka only logs the certificate error and raises "Unable to bootstrap"; one more
        handshake finds the reason (an unknown CA, a name mismatch) to put in the error.
        """
        host, _, port = self.bootstrap.split(",")[0].rpartition(":")
        writer: asyncio.StreamWriter | None = None
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host.strip("[]"), int(port), ssl=self._security["ssl_context"]
                ),
                self.connect_timeout,
            )
        except ssl.SSLError as exc:
            return f"TLS handshake failed: {exc.reason or exc}" + (
                f" ({exc.verify_message})" if isinstance(exc, ssl.SSLCertVerificationError) else ""
            )
        except (OSError, TimeoutError):
            return None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return None

    def _require(self) -> Any:
        if self._link.closed:
            raise TransportError(f"the kafka transport for {self.bootstrap} is closed")
        if self._producer is None:
            raise TransportError("the kafka transport is not started; await transport.start()")
        return self._producer

    async def close(self, timeout: float = 5.0) -> None:
        if self._link.closed:
            return
        subs = list(self._subs)
        if subs:
            await asyncio.gather(*(s.close(timeout) for s in subs), return_exceptions=True)
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        self._link.state = TransportState.CLOSED
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), max(timeout, 1.0))
        if admin is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), max(timeout, 1.0))

    # ---- topics ----------------------------------------------------------------------------

    def topic_for(self, type_: str) -> str:
        """The topic an event of ``type_`` travels on."""
        if not self.topic_per_type:
            return self.topic
        if type_.startswith("dlq."):
            raise TransportError(
                f"kafka: event type {type_!r} would collide with the dead-letter topics "
                f"{self.prefix}dlq.*; rename the type"
            )
        topic = self.prefix + type_
        _check_topic(topic, f"event type {type_!r}")
        return topic

    def dlq_topic(self, subscription: str) -> str:
        return dead_letter_name(self.prefix, subscription, lead="")

    async def _ensure_topic(self, topic: str, partitions: int | None = None) -> None:
        """Create ``topic`` once per process (existing topics are left as they are)."""
        fut = self._topics.get(topic)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._topics[topic] = fut
            try:
                await self._create_topic(topic, partitions or self.partitions)
            except BaseException as exc:
                del self._topics[topic]
                fut.set_exception(exc)
                fut.exception()  # retrieved: the waiters below re-raise it
                raise
            fut.set_result(None)
        await asyncio.shield(fut)

    async def _create_topic(self, topic: str, partitions: int) -> None:
        admin = self._admin
        if admin is None:
            raise TransportError("the kafka transport is not started; await transport.start()")
        try:
            response = await asyncio.wait_for(
                admin.create_topics([NewTopic(topic, partitions, self.replication)]),
                self.publish_timeout,
            )
        except (TimeoutError, KafkaError, OSError) as exc:
            raise TransportError(
                f"cannot create topic {topic!r} on the {self._where()}: {exc}"
            ) from exc
        for item in getattr(response, "topic_errors", ()):
            code = item[1]
            if code not in (0, _TOPIC_EXISTS):
                message = item[2] if len(item) > 2 else ""
                raise TransportError(
                    f"the {self._where()} refused to create topic {topic!r} "
                    f"(error code {code}: {message}); create it yourself or fix the ACLs"
                )

    async def _topic_exists(self, topic: str) -> bool:
        if topic in self._topics and self._topics[topic].done():
            return True
        return topic in await self._all_topics()

    async def _all_topics(self) -> set[str]:
        producer = self._require()
        try:
            cluster = await asyncio.wait_for(
                producer.client.fetch_all_metadata(), self.connect_timeout
            )
        except (TimeoutError, KafkaError, OSError) as exc:
            raise TransportError(f"cannot read metadata from the {self._where()}: {exc}") from exc
        topics: set[str] = cluster.topics()
        return topics

    # ---- publishing ------------------------------------------------------------------------

    def _out(self, event: Event) -> _Out:
        key = event.key or event.type  # keyless events stay ordered per type
        return _Out(
            topic=self.topic_for(event.type),
            key=key.encode(),
            value=encode(event),
            headers=[("content-type", CONTENT_TYPE), (H_TYPE, event.type.encode())],
        )

    async def publish(self, event: Event) -> None:
        await self._send([self._out(event)])

    async def publish_many(self, events: Sequence[Event]) -> None:
        if events:
            await self._send([self._out(e) for e in events])

    async def _send(self, items: list[_Out]) -> None:
        producer = self._require()
        try:
            async with asyncio.timeout(self.publish_timeout):
                for topic in {item.topic for item in items}:
                    await self._ensure_topic(topic)
                await self._deliver(producer, items)
        except TransportError as exc:
            self._link.lost(str(exc))
            raise
        except TimeoutError as exc:
            error = TransportError(
                f"publish to the {self._where()} was not acknowledged within "
                f"{self.publish_timeout:g}s (broker down or unreachable?); it may or may not "
                "have been stored: publish again (consumers see at-least-once)"
            )
            self._link.lost(str(error))
            raise error from exc
        except (KafkaError, OSError) as exc:
            self._link.lost(str(exc))
            raise TransportError(f"publish to the {self._where()} failed: {exc}") from exc
        self._link.connected()
        self.stats.published += len(items)

    async def _partition_of(self, producer: Any, item: _Out) -> int:
        """Kafka's default partitioner (murmur2 of the key), memoized per topic and key."""
        cache = self._key_partitions.get(item.topic)
        if cache is None:
            parts = sorted(await producer.partitions_for(item.topic))
            cache = self._key_partitions[item.topic] = ({}, parts)
        by_key, parts = cache
        key = item.key or b""
        partition = by_key.get(key)
        if partition is None:
            partition = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
            if len(by_key) > 100_000:
                by_key.clear()
            by_key[key] = partition
        return partition

    async def _deliver(self, producer: Any, items: list[_Out]) -> None:
        """Send one record batch per partition, await every ack, resend from a failure on.

        Building the batches here skips a future and an accumulator lookup per record. When a
        batch fails with a retriable error, it and every later batch of its partition are sent
        again (order per key holds; records of those batches may be stored twice).
        """
        if len(items) == 1:
            await self._deliver_one(producer, items[0])
            return
        pending = items
        while pending:
            groups: dict[tuple[str, int], list[_Out]] = {}
            for item in pending:
                partition = await self._partition_of(producer, item)
                groups.setdefault((item.topic, partition), []).append(item)
            sent: list[tuple[Any, list[_Out], tuple[str, int]]] = []
            for (topic, partition), outs in groups.items():
                batch = producer.create_batch()
                chunk: list[_Out] = []
                for out in outs:
                    if (
                        batch.append(
                            key=out.key, value=out.value, timestamp=None, headers=out.headers
                        )
                        is None
                    ):
                        if not chunk:
                            raise TransportError(
                                f"an event of {len(out.value)} bytes does not fit a Kafka batch "
                                f"(max_batch_size={self.max_batch_size}); raise max_batch_size"
                            )
                        future = await producer.send_batch(batch, topic, partition=partition)
                        sent.append((future, chunk, (topic, partition)))
                        batch, chunk = producer.create_batch(), []
                        batch.append(
                            key=out.key, value=out.value, timestamp=None, headers=out.headers
                        )
                    chunk.append(out)
                if chunk:
                    future = await producer.send_batch(batch, topic, partition=partition)
                    sent.append((future, chunk, (topic, partition)))
            results = await asyncio.gather(*(f for f, _, _ in sent), return_exceptions=True)
            again: list[_Out] = []
            failed: set[tuple[str, int]] = set()
            error: BaseException | None = None
            for (_f, chunk, tp), result in zip(sent, results, strict=True):
                if isinstance(result, BaseException):
                    if not getattr(result, "retriable", False):
                        raise result
                    error = error or result
                    failed.add(tp)
                if tp in failed:
                    again.extend(chunk)
            if error is not None:
                self._link.report(error, f"publish failed, sending {len(again)} record(s) again")
                await asyncio.sleep(0.2)
            pending = again

    async def _deliver_one(self, producer: Any, out: _Out) -> None:
        """One record through the producer's accumulator, so concurrent single publishes share
        the open batch of their partition instead of queueing a batch each behind it."""
        partition = await self._partition_of(producer, out)
        while True:
            try:
                future = await producer.send(
                    out.topic,
                    value=out.value,
                    key=out.key,
                    partition=partition,
                    headers=out.headers,
                )
                await future
                return
            except KafkaError as exc:
                if not getattr(exc, "retriable", False):
                    raise
                self._link.report(exc, "publish failed, sending the record again")
                await asyncio.sleep(0.2)

    # ---- subscribing -----------------------------------------------------------------------

    async def subscribe(
        self,
        pattern: str,
        handler: AsyncHandler,
        options: SubscribeOptions | None = None,
    ) -> KafkaSubscription:
        compiled = compile_pattern(pattern)  # PatternError before any I/O
        self._require()
        opts = options or SubscribeOptions()
        name = subscription_name(pattern, opts.group)
        sub = KafkaSubscription(self, compiled, name, handler, opts)
        self._subs.add(sub)
        try:
            await sub.open()
        except BaseException:
            self._subs.discard(sub)
            await sub.close(0)
            raise
        return sub

    async def _write_dead_letter(
        self, source_topic: str, key: bytes | None, dead: DeadMessage
    ) -> None:
        """Store a dead message in its subscription's DLQ topic (raises if not stored)."""
        producer = self._require()
        topic = self.dlq_topic(dead.subscription)
        headers: list[tuple[str, bytes]] = [
            (H_SUBSCRIPTION, dead.subscription.encode()),
            (H_ERROR, dead.error[:_ERROR_HEADER_MAX].encode()),
            (H_ATTEMPTS, str(dead.attempts).encode()),
            (H_FAILED_AT, repr(dead.failed_at).encode()),
            (H_TOPIC, source_topic.encode()),
        ]
        if dead.event_id is not None:
            headers.append((H_EVENT_ID, dead.event_id.encode()))
        if dead.event_type is not None:
            headers.append((H_TYPE, dead.event_type.encode()))
        if key is not None:
            headers.append((H_KEY, key))
        async with asyncio.timeout(self.publish_timeout):
            await self._ensure_topic(topic, partitions=1)
            await producer.send_and_wait(topic, dead.raw, key=key, headers=headers)

    # ---- dead letters ----------------------------------------------------------------------

    def _dlq_lock(self, subscription: str) -> asyncio.Lock:
        lock = self._dlq_locks.get(subscription)
        if lock is None:
            lock = self._dlq_locks[subscription] = asyncio.Lock()
        return lock

    async def _read_dlq(
        self, subscription: str, limit: int | None
    ) -> tuple[list[Any], Any, TopicPartition] | None:
        """Records of the DLQ from its cursor (at most ``limit``) and the consumer holding it."""
        topic = self.dlq_topic(subscription)
        if not await self._topic_exists(topic):
            return None
        tp = TopicPartition(topic, 0)
        consumer = AIOKafkaConsumer(
            group_id=f"{self.prefix}dlq-cursor.{subscription}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._client_kwargs(),
        )
        try:
            await asyncio.wait_for(consumer.start(), self.connect_timeout)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            cursor = await consumer.committed(tp)
            if cursor is None:
                cursor = (await consumer.beginning_offsets([tp]))[tp]
            consumer.seek(tp, cursor)
            records: list[Any] = []
            want = end - cursor if limit is None else min(limit, end - cursor)
            deadline = time.monotonic() + self.publish_timeout
            while len(records) < want:
                if time.monotonic() > deadline:
                    raise TransportError(f"reading dead letters from {topic!r} timed out")
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=want - len(records))
                for rec in batch.get(tp, ()):
                    if rec.offset < end:
                        records.append(rec)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            if isinstance(exc, _CONNECT_ERRORS):
                raise TransportError(f"cannot read the DLQ {topic!r}: {exc}") from exc
            raise
        return records, consumer, tp

    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadMessage]:
        async with self._dlq_lock(subscription):
            found = await self._read_dlq(subscription, limit)
            if found is None:
                return []
            records, consumer, _tp = found
            with contextlib.suppress(Exception):
                await consumer.stop()
        return [_dead_message(subscription, rec) for rec in records]

    async def replay_dead_letters(self, subscription: str) -> int:
        async with self._dlq_lock(subscription):
            found = await self._read_dlq(subscription, None)
            if found is None:
                return 0
            records, consumer, tp = found
            try:
                if not records:
                    return 0
                items = []
                for rec in records:
                    headers = list(rec.headers or ())
                    topic = _header(headers, H_TOPIC) or self.topic
                    type_ = _header(headers, H_TYPE)
                    out_headers = [
                        ("content-type", CONTENT_TYPE),
                        (H_REPLAY, subscription.encode()),
                    ]
                    if type_ is not None:
                        out_headers.append((H_TYPE, type_.encode()))
                    items.append(_Out(topic, rec.key, rec.value or b"", out_headers))
                await self._send(items)
                try:
                    await consumer.commit({tp: records[-1].offset + 1})
                except (KafkaError, OSError) as exc:
                    raise TransportError(
                        f"replayed {len(items)} dead letters of {subscription!r} but could not "
                        f"move the DLQ cursor ({exc}); a later replay sends them again"
                    ) from exc
                return len(items)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    # ---- health ----------------------------------------------------------------------------

    async def ping(self) -> float:
        producer = self._require()
        began = time.perf_counter()
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), self.connect_timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            self._link.lost(f"ping: {exc or 'no answer'}")
            raise TransportError(f"the {self._where()} does not answer: {exc}") from exc
        self._link.connected()
        return time.perf_counter() - began

    def subscriptions(self) -> list[TransportSubscription]:
        return list(self._subs)

    def health(self) -> TransportHealth:
        lag: int | None = None
        for sub in self._subs:
            sub_lag = sub.lag()
            if sub_lag is not None:
                lag = (lag or 0) + sub_lag
        return TransportHealth(
            state=self._link.state,
            last_error=self._link.last_error,
            lag=lag,
            detail={
                "bootstrap": self.bootstrap,
                "topic": self.prefix + "<type>" if self.topic_per_type else self.topic,
                "subscriptions": len(self._subs),
            },
        )


def _dead_message(subscription: str, rec: Any) -> DeadMessage:
    headers = list(rec.headers or ())
    attempts = _header(headers, H_ATTEMPTS)
    failed_at = _header(headers, H_FAILED_AT)
    return DeadMessage(
        subscription=_header(headers, H_SUBSCRIPTION) or subscription,
        raw=rec.value or b"",
        error=_header(headers, H_ERROR) or "",
        attempts=int(attempts) if attempts and attempts.isdigit() else 0,
        failed_at=float(failed_at) if failed_at else rec.timestamp / 1000,
        event_id=_header(headers, H_EVENT_ID),
        event_type=_header(headers, H_TYPE),
    )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: KafkaSubscription) -> None:
        self.sub = sub

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.sub._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.sub._on_assigned(set(assigned))


class _Handle:
    """What an ack or nack of one delivered record needs (bound methods, no closures)."""

    __slots__ = ("count", "error", "event", "part", "raw", "rec", "sub", "tp")

    def __init__(
        self,
        sub: KafkaSubscription,
        tp: Any,
        part: _Partition,
        rec: Any,
        raw: bytes,
        event: Event | None,
        error: str | None,
        count: int,
    ) -> None:
        self.sub, self.tp, self.part, self.rec = sub, tp, part, rec
        self.raw, self.event, self.error, self.count = raw, event, error, count

    async def ack(self) -> None:
        self.sub._acked(self)

    async def nack(self) -> None:
        # Kafka cannot hand one record back: deliver it again here, later. Its offset stays
        # uncommitted meanwhile, so a crash before then redelivers it through the group.
        self.sub._spawn(self.sub._again(self))


class KafkaSubscription:
    """One consumer in one group, feeding the shared Dispatcher and committing acked offsets."""

    def __init__(
        self,
        transport: KafkaTransport,
        pattern: Pattern,
        name: str,
        handler: AsyncHandler,
        options: SubscribeOptions,
    ) -> None:
        self.transport = transport
        self.pattern = pattern.text
        self._pattern = pattern
        self.name = name
        self.group = options.group
        self.options = options
        self.group_id = transport.prefix + name
        self.dispatcher = Dispatcher(
            name, handler, options, self._write_dead_letter, on_error=transport.on_error
        )
        self._consumer: Any = None
        self._parts: dict[Any, _Partition] = {}
        self._snapshot: dict[Any, int] = {}
        self._assigned = asyncio.Event()
        self._dirty = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetcher: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._prefix_len = len(transport.prefix)
        self._regex: re.Pattern[str] | None = None
        self._wanted = memoized(pattern.matches)
        # raw body (by identity) -> (raw, source topic, key), for the dead-letter record
        self._sources: dict[int, tuple[bytes, str, bytes | None]] = {}

    @property
    def stats(self) -> Any:
        return self.dispatcher.stats

    # ---- opening ---------------------------------------------------------------------------

    async def open(self) -> None:
        t = self.transport
        # Topics first: a consumer that joins before its topic exists joins twice (slowly).
        self._regex = None
        if t.topic_per_type and not self._pattern.is_exact:
            self._regex = re.compile(topic_regex(t.prefix, self._pattern, exclude="dlq."))
            topics = await self._matching_topics()
        else:
            topics = [t.topic_for(self.pattern) if t.topic_per_type else t.topic]
            await t._ensure_topic(topics[0])
        tps = await self._partitions(topics)
        session = t.session_timeout or min(max(6.0, self.options.ack_wait), 10.0)
        kwargs: dict[str, Any] = {
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "metadata_max_age_ms": int(t.metadata_max_age * 1000),
            "fetch_max_wait_ms": int(t.fetch_max_wait * 1000),
            "fetch_min_bytes": t.fetch_min_bytes,
            **t._client_kwargs(),
        }
        if self.group is not None:
            kwargs.update(
                group_id=self.group_id,
                session_timeout_ms=int(session * 1000),
                heartbeat_interval_ms=int(min(t.heartbeat_interval, session / 3) * 1000),
                rebalance_timeout_ms=int(max(session, 10.0) * 1000),
                # A JoinGroup may wait a whole rebalance: do not time it out before that.
                request_timeout_ms=int((max(session, 10.0) + 5.0) * 1000),
            )
        consumer = self._consumer = AIOKafkaConsumer(**kwargs)
        try:
            await asyncio.wait_for(consumer.start(), t.connect_timeout)
            if self.options.start == "new" and tps:
                self._snapshot = dict(await consumer.end_offsets(tps))
        except _CONNECT_ERRORS as exc:
            raise TransportError(
                f"subscription {self.name}: cannot reach the {t._where()}: "
                f"{t._connect_failure(exc)}"
            ) from exc
        if self.group is None:
            # A broadcast subscription owns its cursor alone: no group to join (which costs a
            # rebalance delay), partitions assigned directly, offsets tracked in memory only.
            await self._assign(tps)
            self._fetcher = asyncio.ensure_future(self._fetch_loop())
            if self._regex is not None:
                self._spawn(self._discover())
            return
        listener = _Listener(self)
        if self._regex is not None:
            consumer.subscribe(pattern=self._regex.pattern, listener=listener)
        else:
            consumer.subscribe(topics=topics, listener=listener)
        self._fetcher = asyncio.ensure_future(self._fetch_loop())
        self._committer = asyncio.ensure_future(self._commit_loop())
        if topics:
            wait = max(30.0, session)
            try:
                await asyncio.wait_for(self._assigned.wait(), wait)
            except TimeoutError:
                raise TransportError(
                    f"subscription {self.name}: the {t._where()} assigned no partitions of "
                    f"{topics} to group {self.group_id!r} within {wait:g}s"
                ) from None

    async def _matching_topics(self) -> list[str]:
        regex = self._regex
        assert regex is not None
        return sorted(
            x
            for x in await self.transport._all_topics()
            if regex.match(x) and self._pattern.matches(x[self._prefix_len :])
        )

    async def _partitions(self, topics: list[str]) -> list[Any]:
        producer = self.transport._require()
        return [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await producer.partitions_for(topic))
        ]

    async def _assign(self, tps: list[Any]) -> None:
        """(Re)assign a broadcast consumer, keeping the position of partitions it already had.

        Every partition is registered before the first await, so a record fetched meanwhile
        always finds its partition (see ``_fetch_loop``).
        """
        consumer = self._consumer
        consumer.assign(tps)
        for tp in tps:
            if tp not in self._parts:
                start = self._snapshot.get(tp) if self.options.start == "new" else None
                self._parts[tp] = _Partition(start)
        for tp in tps:
            part = self._parts[tp]
            position = part.next if part.next is not None else part.start
            if position is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, position)

    async def _discover(self) -> None:
        """Pick up topics created after a broadcast regex subscription started."""
        while not self._closing:
            await asyncio.sleep(self.transport.metadata_max_age)
            try:
                topics = await self._matching_topics()
                tps = await self._partitions(topics)
            except Exception as exc:
                self.transport._link.report(exc, f"subscription {self.name}: topic discovery")
                continue
            if set(tps) != set(self._parts):
                await self._assign(tps)

    async def _on_assigned(self, assigned: set[Any]) -> None:
        """Register the partitions the group gave this member, each at its start offset.

        aiokafka starts fetching an assigned partition before this callback runs, and goes
        on while it awaits the broker (committed offsets, the initial commit, which waits
        for replication on a real cluster). So the partitions are paused before the first
        await (no record of theirs is returned meanwhile), positioned explicitly at their
        start (records returned before the pause are fetched again), registered, and only
        then resumed.
        """
        consumer = self._consumer
        with contextlib.suppress(KafkaError):  # a rebalance already took them back
            consumer.pause(*assigned)
        try:
            for tp in assigned:
                self._parts[tp] = await self._position_assigned(tp)
        finally:
            with contextlib.suppress(KafkaError):
                consumer.resume(*assigned)
        self._assigned.set()

    async def _position_assigned(self, tp: Any) -> _Partition:
        """Seek a newly assigned (paused) partition to where the group resumes it."""
        consumer = self._consumer
        try:
            committed: int | None = await consumer.committed(tp)
            if committed is None and self.options.start == "new":
                # Where the group has no cursor yet: start at the end seen at subscribe time
                # (0 for a topic that appeared since), and commit it so members agree.
                committed = self._snapshot.get(tp, 0)
                try:
                    await consumer.commit({tp: committed})
                except (KafkaError, OSError) as exc:
                    self.transport._link.report(exc, f"subscription {self.name}: initial commit")
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        except (KafkaError, OSError) as exc:
            # Registered anyway: its records are taken from wherever the consumer stands
            # (the committed offset, or a record sent back by _fetch_loop), never dropped.
            self.transport._link.report(exc, f"subscription {self.name}: positioning {tp}")
            return _Partition(None)
        return _Partition(committed)

    async def _on_revoked(self, revoked: set[Any]) -> None:
        parts = {tp: self._parts[tp] for tp in revoked if tp in self._parts}
        for part in parts.values():
            part.revoked = True
        if not self._closing and parts:
            # Let handlers of these partitions finish so the next owner does not repeat them.
            drain = self.transport.revoke_drain
            if drain is None:
                drain = min(self.options.ack_wait, 5.0)
            deadline = time.monotonic() + drain
            while any(p.pending for p in parts.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await self._commit(only=set(parts))
        for tp in parts:
            self._parts.pop(tp, None)

    # ---- consuming -------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        failures = 0
        while not self._closing:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the client reconnects by itself; say so and go on
                failures += 1
                self.transport._link.report(exc, f"subscription {self.name}: fetch failed")
                await asyncio.sleep(min(0.1 * failures, 1.0))
                continue
            failures = 0
            for tp, records in batches.items():
                for rec in records:
                    part = self._parts.get(tp)
                    if part is None:
                        self._send_back(tp, rec.offset)
                        break
                    if part.revoked or self._closing:
                        break
                    expected = part.expected()
                    if expected is not None:
                        if rec.offset < expected:
                            continue  # before the group's start, or taken already
                        if rec.offset > expected and self._hold_gap(tp, part, expected, rec.offset):
                            break  # fetch this partition again from the missing offset
                    await self._take(tp, part, rec)

    def _send_back(self, tp: Any, offset: int) -> None:
        """Fetch again, later, a record of a partition that is assigned but not registered yet.

        aiokafka may return records of a partition it has just assigned before the assignment
        callback has registered it; the consumer's position has already moved past them, so
        dropping them would lose them (or stall the partition until a newer record arrives).
        A partition no longer assigned is left alone: its next owner starts from the commit.
        """
        consumer = self._consumer
        if self._closing or tp not in consumer.assignment():
            return
        with contextlib.suppress(KafkaError):  # unassigned meanwhile
            consumer.seek(tp, offset)

    def _hold_gap(self, tp: Any, part: _Partition, expected: int, found: int) -> bool:
        """Whether to refetch from ``expected`` rather than skip the offsets before this record.

        Tidings writes no transaction markers and its topics are not compacted, so offsets
        should be contiguous. Yet a broker may serve a later batch before a concurrent earlier
        one is readable (seen with Tansu under concurrent producers: the skipped record was in
        the log when read again). Skipping would lose it, so the partition is fetched again from
        the missing offset until it appears; a gap still there after ``gap_wait`` is a real one
        (compaction, aborted transactions from another producer) and is passed over.
        """
        wait = self.transport.gap_wait
        if wait <= 0:
            return False
        now = time.monotonic()
        if part.gap is None or part.gap[0] != expected:
            part.gap = (expected, now)
        elif now - part.gap[1] >= wait:
            log.info(
                "subscription %s: offsets %d-%d of %s-%d still missing after %gs; going on",
                self.name, expected, found - 1, tp.topic, tp.partition, wait,
            )  # fmt: skip
            part.gap = None
            return False
        try:
            self._consumer.seek(tp, expected)
        except Exception:  # revoked meanwhile: the next owner starts from the commit
            return False
        return True

    async def _take(self, tp: Any, part: _Partition, rec: Any) -> None:
        part.take(rec.offset)
        replay_for = type_hint = None
        for key, value in rec.headers or ():
            if key == H_TYPE:
                type_hint = value.decode("utf-8", "replace")
            elif key == H_REPLAY:
                replay_for = value.decode("utf-8", "replace")
        if replay_for is not None and replay_for != self.name:
            part.ack(rec.offset)  # a dead letter replayed for another subscription
            self._dirty.set()
            return
        if self.transport.topic_per_type:
            type_hint = tp.topic[self._prefix_len :]
        if type_hint is not None and not self._wanted(type_hint):
            part.ack(rec.offset)
            self._dirty.set()
            return
        raw: bytes = rec.value or b""
        event: Event | None = None
        error: str | None = None
        try:
            event = decode(raw)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        if event is not None and type_hint is None and not self._wanted(event.type):
            part.ack(rec.offset)
            self._dirty.set()
            return
        await self.dispatcher.submit(self._inbound(tp, part, rec, raw, event, error, 1))

    def _inbound(
        self,
        tp: Any,
        part: _Partition,
        rec: Any,
        raw: bytes,
        event: Event | None,
        error: str | None,
        count: int,
    ) -> Inbound:
        handle = _Handle(self, tp, part, rec, raw, event, error, count)
        inbound = Inbound(
            raw=raw, event=event, ack=handle.ack, nack=handle.nack, delivery_count=count
        )
        inbound.decode_error = error
        self._sources[id(raw)] = (raw, tp.topic, rec.key)
        return inbound

    def _acked(self, handle: _Handle) -> None:
        self._sources.pop(id(handle.raw), None)
        if self._parts.get(handle.tp) is handle.part:
            handle.part.ack(handle.rec.offset)
            if self.group is not None:
                self._dirty.set()

    async def _again(self, h: _Handle) -> None:
        await asyncio.sleep(min(self.options.retry.delay(h.count), 5.0))
        if self._parts.get(h.tp) is h.part and not self._closing:
            inbound = self._inbound(h.tp, h.part, h.rec, h.raw, h.event, h.error, h.count + 1)
            await self.dispatcher.submit(inbound)

    async def _write_dead_letter(self, dead: DeadMessage) -> None:
        source = self._sources.get(id(dead.raw))
        topic, key = self.transport.topic, None
        if source is not None and source[0] is dead.raw:
            _, topic, key = source
        await self.transport._write_dead_letter(topic, key, dead)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- committing ------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._commit()
            if self.transport.commit_interval:
                await asyncio.sleep(self.transport.commit_interval)

    async def _commit(self, only: set[Any] | None = None) -> None:
        if self.group is None:
            return  # a broadcast cursor lives and dies with its subscription
        async with self._commit_lock:
            offsets: dict[Any, int] = {}
            for tp, part in list(self._parts.items()):
                if only is not None and tp not in only:
                    continue
                mark = part.watermark()
                if mark is not None and (part.committed is None or mark > part.committed):
                    offsets[tp] = mark
            if not offsets:
                return
            try:
                await self._consumer.commit(offsets)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a rebalance or an outage: the next commit covers it
                self.transport._link.report(exc, f"subscription {self.name}: commit failed")
                self._dirty.set()
                return
            for tp, mark in offsets.items():
                done = self._parts.get(tp)
                if done is not None:
                    done.committed = mark

    # ---- state and closing -----------------------------------------------------------------

    def lag(self) -> int | None:
        consumer = self._consumer
        if consumer is None:
            return None
        total: int | None = None
        for tp, part in list(self._parts.items()):
            high = consumer.highwater(tp)
            mark = part.watermark()
            if mark is None:
                mark = part.committed
            if high is None or mark is None:
                continue
            total = (total or 0) + max(0, high - mark)
        return total

    async def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self.transport._subs.discard(self)
        if self._fetcher is not None:
            self._fetcher.cancel()
            with contextlib.suppress(BaseException):
                await self._fetcher
        left = await self.dispatcher.close(timeout)
        if left:
            log.warning(
                "subscription %s: %d message(s) unfinished at close, left unacked for redelivery",
                self.name,
                left,
            )
        for task in list(self._tasks):
            task.cancel()
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(BaseException):
                await self._committer
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._commit(), max(timeout, 1.0))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.stop(), max(timeout, 2.0))
