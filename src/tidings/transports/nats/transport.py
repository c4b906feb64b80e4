"""The NATS transport: options, connection lifecycle, streams, subscribing and health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import nats
import nats.js.errors as jerr
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from tidings.topics import compile_pattern
from tidings.transport import (
    AsyncHandler,
    Capabilities,
    DeadMessage,
    SubscribeOptions,
    TransportError,
    TransportHealth,
    TransportState,
    TransportStats,
    TransportSubscription,
    subscription_name,
)
from tidings.transports.common import ConnectionReporter, ErrorCallback, Options, describe
from tidings.transports.nats.core import NatsCoreSubscription
from tidings.transports.nats.dead_letters import NatsDeadLetters
from tidings.transports.nats.jetstream import NatsJetStreamSubscription
from tidings.transports.nats.publish import _TRANSIENT
from tidings.transports.nats.subjects import filter_subject
from tidings.urls import redact_url

log = logging.getLogger("tidings.transports.nats")

JETSTREAM_CAPABILITIES = Capabilities(
    ordering=True, persistent=True, consumer_groups=True, replay=True, redelivery=True
)
CORE_CAPABILITIES = Capabilities(
    ordering=True, persistent=False, consumer_groups=True, replay=False, redelivery=False
)

_TIDINGS_PARAMS = ("stream", "prefix", "mode", "storage")
_OPT = Options("NATS")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
_STREAM_RE = re.compile(r"[A-Za-z0-9_\-]+")


class NatsTransport(NatsDeadLetters):
    """NATS JetStream (durable, at-least-once) or core NATS transport; see the package docstring.

    Options (keyword arguments override the URL's query): ``stream``, ``prefix``, ``mode``
    (``jetstream`` | ``core``), ``storage`` (``file`` | ``memory``), ``on_error`` (called with
    every error the transport or a handler hits), ``connect_timeout`` (seconds, first connect),
    ``publish_timeout`` (how long a publish keeps retrying while the server is away),
    ``publish_window`` (PubAcks outstanding in ``publish_many``), ``reconnect_wait``,
    ``max_age`` (seconds a stream keeps events; None = forever), ``broadcast_idle`` (seconds
    before the server drops the consumer of a broadcast subscription whose process died).
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str | None = None,
        prefix: str | None = None,
        mode: str | None = None,
        storage: str | None = None,
        on_error: ErrorCallback | None = None,
        connect_timeout: float = 3.0,
        publish_timeout: float = 10.0,
        publish_window: int = 1000,
        reconnect_wait: float = 0.5,
        max_age: float | None = None,
        broadcast_idle: float = 300.0,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        # What logs, errors and health may show; the credentials stay in _server. NATS puts a
        # token or a user alone in the userinfo, so all of it is masked.
        self.url = redact_url(url, whole_userinfo=True)
        if scheme not in ("nats", "tls"):
            raise TransportError(f"NATS URL {self.url!r}: expected nats:// or tls://")
        query = dict(parse_qsl(parts.query))
        _OPT.unknown(query, _TIDINGS_PARAMS, noun="parameter", where=f"NATS URL {self.url!r}")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 4222
        self._where = f"{self._host}:{self._port}"
        netloc = parts.netloc or self._where
        self._server = urlunsplit((scheme, netloc, "", "", ""))
        self.stream = stream or query.get("stream") or "TIDINGS"
        self.prefix = prefix or query.get("prefix") or "tidings"
        self.mode = (mode or query.get("mode") or "jetstream").lower()
        self.storage = (storage or query.get("storage") or "file").lower()
        if not _STREAM_RE.fullmatch(self.stream):
            raise TransportError(
                f"NATS stream name {self.stream!r}: use letters, digits, '_' and '-' only"
            )
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise TransportError(
                f"NATS subject prefix {self.prefix!r}: use dot-separated tokens of letters, "
                "digits, '_' and '-' (no wildcards, no spaces)"
            )
        _OPT.choice("mode", self.mode, ("jetstream", "core"))
        _OPT.choice("storage", self.storage, ("file", "memory"))
        _OPT.integer("publish_window", publish_window)
        self.dlq_stream = f"{self.stream}_DLQ"
        self.dlq_prefix = f"{self.prefix}_dlq"
        self.capabilities = CORE_CAPABILITIES if self.mode == "core" else JETSTREAM_CAPABILITIES
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._publish_window = publish_window
        self._flush_timeout = max(1, math.ceil(publish_timeout))  # nats-py wants whole seconds
        self._reconnect_wait = reconnect_wait
        self._max_age = max_age
        self._broadcast_idle = broadcast_idle
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._link = ConnectionReporter(log, "NATS", self._where, on_error=on_error)
        self._subs: set[NatsJetStreamSubscription | NatsCoreSubscription] = set()
        self.stats = TransportStats()  # read by exporters
        self._subjects: dict[str, str] = {}
        self._core_dead: dict[str, list[DeadMessage]] = {}
        self._closed = False
        self._reconnects = 0
        self._reconnected_at = 0.0

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._nc is not None:
            return
        if self._closed:
            raise TransportError("this NATS transport is closed; open a new one")
        self._link.state = TransportState.CONNECTING
        try:
            # One attempt plus one retry on first connect (nats-py would otherwise retry forever
            # with max_reconnect_attempts=-1); unlimited reconnects are switched on once up.
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=[self._server],
                    name="tidings",
                    connect_timeout=self._connect_timeout,
                    allow_reconnect=True,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=self._reconnect_wait,
                    error_cb=self._nats_error,
                    disconnected_cb=self._nats_disconnected,
                    reconnected_cb=self._nats_reconnected,
                    closed_cb=self._nats_closed,
                ),
                timeout=self._connect_timeout * 2 + self._reconnect_wait + 1.0,
            )
        except Exception as exc:
            self._link.state = TransportState.DISCONNECTED
            self._link.last_error = describe(exc)
            raise TransportError(
                f"NATS server at {self._where} is unreachable ({self._link.last_error}); "
                f"is nats-server running there (with -js for JetStream)? URL: {self.url}"
            ) from exc
        nc.options["max_reconnect_attempts"] = -1
        self._nc = nc
        if self.mode == "jetstream":
            self._js = nc.jetstream(timeout=5.0)
            try:
                await self._ensure_streams()
            except BaseException:
                await nc.close()
                self._nc = self._js = None
                self._link.state = TransportState.DISCONNECTED
                raise
        self._link.state = TransportState.CONNECTED
        log.info(
            "NATS transport connected to %s (%s, stream %s, prefix %s)",
            self._where,
            self.mode,
            self.stream,
            self.prefix,
        )

    async def _ensure_streams(self) -> None:
        """Create or widen the event stream and its DLQ stream (idempotent, safe to race)."""
        storage = StorageType.MEMORY if self.storage == "memory" else StorageType.FILE
        for name, subjects in (
            (self.stream, f"{self.prefix}.>"),
            (self.dlq_stream, f"{self.dlq_prefix}.>"),
        ):
            await self._ensure_stream(name, subjects, storage)

    async def _ensure_stream(self, name: str, subject: str, storage: StorageType) -> None:
        js = self._jetstream()
        try:
            info = await js.stream_info(name)
        except jerr.NotFoundError:
            info = None
        except (jerr.NoStreamResponseError, jerr.ServiceUnavailableError) as exc:
            raise TransportError(
                f"NATS server at {self._where} has no JetStream; start nats-server with -js, "
                "or use ?mode=core for fire-and-forget delivery"
            ) from exc
        except (jerr.APIError, *_TRANSIENT) as exc:
            raise TransportError(
                f"NATS server at {self._where}: reading stream {name!r} failed: {describe(exc)}"
            ) from exc
        try:
            if info is None:
                await js.add_stream(
                    StreamConfig(
                        name=name,
                        subjects=[subject],
                        retention=RetentionPolicy.LIMITS,
                        storage=storage,
                        max_age=self._max_age,
                        # the de-duplication window may not exceed the retention
                        duplicate_window=min(120.0, self._max_age or 120.0),
                    )
                )
            elif subject not in (info.config.subjects or []):
                info.config.subjects = [*(info.config.subjects or []), subject]
                await js.update_stream(info.config)
        except jerr.APIError as exc:
            if exc.err_code == 10058:  # stream name already in use: a racing creator won
                return
            hint = ""
            if exc.err_code == 10065:
                hint = (
                    f"; subjects {subject!r} already belong to another stream: pass that "
                    "stream's name as ?stream=, or pick another ?prefix="
                )
            raise TransportError(
                f"NATS server at {self._where}: creating stream {name!r} for {subject!r} "
                f"failed: {describe(exc)}{hint}"
            ) from exc

    async def close(self, timeout: float = 5.0) -> None:
        """Drain every subscription within ``timeout`` (unfinished messages stay unacked)."""
        if self._closed:
            return
        self._closed = True
        subs = list(self._subs)
        if subs:
            await asyncio.gather(*(s.close(timeout) for s in subs), return_exceptions=True)
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=1)  # acks of the drained messages
            with contextlib.suppress(Exception):
                await nc.close()
        self._link.state = TransportState.CLOSED

    # ---- connection callbacks --------------------------------------------------------------

    async def _nats_error(self, exc: Exception) -> None:
        if self._nc is None:  # first connect: start() raises with the reason
            self._link.last_error = describe(exc)
            log.debug("NATS %s: %s", self._where, self._link.last_error)
            return
        self._link.report(exc)

    async def _nats_disconnected(self) -> None:
        if self._link.state is TransportState.CONNECTED and not self._closed:
            self._link.lost()

    async def _nats_reconnected(self) -> None:
        if self._link.state is TransportState.DISCONNECTED and not self._closed:
            self._link.connected()
            self._reconnects += 1
            self._reconnected_at = time.monotonic()
            for sub in list(self._subs):
                if isinstance(sub, NatsJetStreamSubscription):
                    sub.connection_restored()

    async def _nats_closed(self) -> None:
        if self._nc is not None and not self._closed:
            self._link.lost()

    # ---- subscribe -------------------------------------------------------------------------

    async def subscribe(
        self,
        pattern: str,
        handler: AsyncHandler,
        options: SubscribeOptions | None = None,
    ) -> NatsJetStreamSubscription | NatsCoreSubscription:
        compiled = compile_pattern(pattern)  # PatternError before anything touches the server
        options = options or SubscribeOptions()
        self._client()
        name = subscription_name(pattern, options.group)
        subject, exact = filter_subject(self.prefix, compiled)
        sub: NatsJetStreamSubscription | NatsCoreSubscription
        if self.mode == "core":
            sub = NatsCoreSubscription(self, compiled, name, subject, exact, handler, options)
        else:
            sub = NatsJetStreamSubscription(self, compiled, name, subject, exact, handler, options)
        await sub.start()
        self._subs.add(sub)
        return sub

    # ---- health ----------------------------------------------------------------------------

    async def ping(self) -> float:
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise TransportError(f"NATS {self._where} is not connected ({self._link.state.value})")
        began = time.perf_counter()
        try:
            await nc.flush(timeout=5)
        except Exception as exc:
            raise TransportError(f"NATS {self._where}: ping failed: {describe(exc)}") from exc
        return time.perf_counter() - began

    def subscriptions(self) -> list[TransportSubscription]:
        return list(self._subs)

    def health(self) -> TransportHealth:
        lags = [s.lag for s in self._subs if s.lag is not None]
        return TransportHealth(
            state=self._link.state,
            last_error=self._link.last_error,
            lag=sum(lags) if lags else None,
            detail={
                "server": self._where,
                "mode": self.mode,
                "stream": self.stream,
                "prefix": self.prefix,
                "subscriptions": {
                    s.name: {"pattern": s.pattern, "group": s.group, "lag": s.lag}
                    for s in self._subs
                },
            },
        )
