"""The Kafka transport: options, connecting, lifecycle, subscribing and health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from tidings.topics import compile_pattern
from tidings.transport import (
    AsyncHandler,
    Capabilities,
    SubscribeOptions,
    TransportError,
    TransportHealth,
    TransportState,
    TransportStats,
    TransportSubscription,
    subscription_name,
)
from tidings.transports.common import ConnectionReporter
from tidings.transports.kafka.consumer import KafkaSubscription
from tidings.transports.kafka.dead_letters import _DeadLetters
from tidings.transports.kafka.options import (
    _CONNECT_ERRORS,
    _OPT,
    _OPTIONS,
    _parse_netloc,
    _security,
)
from tidings.transports.kafka.topics import _check_topic
from tidings.urls import redact_url

log = logging.getLogger("tidings.transports.kafka")


class KafkaTransport(_DeadLetters):
    """The Transport protocol over aiokafka; see the package docstring for the mapping."""

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
