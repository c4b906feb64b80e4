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

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import nats
import nats.errors as nerr
import nats.js.errors as jerr
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

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
from tidings.transports.common import (
    Backoff,
    ConnectionReporter,
    ErrorCallback,
    Options,
    dead_letter_name,
    describe,
)
from tidings.transports.dispatch import Dispatcher, DispatchStats
from tidings.urls import redact_url

__all__ = [
    "NatsCoreSubscription",
    "NatsJetStreamSubscription",
    "NatsTransport",
    "filter_subject",
    "subject_for_type",
    "type_for_subject",
]

log = logging.getLogger("tidings.transports.nats")

JETSTREAM_CAPABILITIES = Capabilities(
    ordering=True, persistent=True, consumer_groups=True, replay=True, redelivery=True
)
CORE_CAPABILITIES = Capabilities(
    ordering=True, persistent=False, consumer_groups=True, replay=False, redelivery=False
)

_TIDINGS_PARAMS = ("stream", "prefix", "mode", "storage")
_OPT = Options("NATS")
# A type whose segments need no escaping (the common case: a fast path without a regex per char).
_PLAIN_TYPE = re.compile(r"[A-Za-z0-9_\-:]+(?:\.[A-Za-z0-9_\-:]+)*")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
_STREAM_RE = re.compile(r"[A-Za-z0-9_\-]+")
# Characters kept as they are inside a subject token; everything else becomes %XX (UTF-8).
_SAFE_CHARS = "".join(
    chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%*>.$"
)  # printable ASCII except the ones NATS treats specially (and our escape char)
# Errors meaning "the server is not there right now": retry (publishes are de-duplicated).
_TRANSIENT = (
    nerr.TimeoutError,
    asyncio.TimeoutError,
    nerr.NoRespondersError,
    jerr.NoStreamResponseError,
    jerr.ServiceUnavailableError,
    nerr.ConnectionReconnectingError,
    nerr.OutboundBufferLimitError,
    nerr.StaleConnectionError,
    OSError,
)
_HDR_ERROR = "Tidings-Error"
_HDR_ATTEMPTS = "Tidings-Attempts"
_HDR_FAILED_AT = "Tidings-Failed-At"
_HDR_EVENT_ID = "Tidings-Event-Id"
_HDR_EVENT_TYPE = "Tidings-Event-Type"
_HDR_SUBJECT = "Tidings-Subject"
_MSG_ID = "Nats-Msg-Id"
_CORE_DLQ_LIMIT = 10_000


# ---- subjects ------------------------------------------------------------------------------


def _escape_segment(segment: str) -> str:
    """One type segment as a NATS token: reversible, never empty, never a wildcard."""
    if not segment:
        return "%"  # an empty segment ('a..b'); a lone '%' never comes out of quote()
    return quote(segment, safe=_SAFE_CHARS)


def _unescape_segment(token: str) -> str:
    return "" if token == "%" else unquote(token)


def subject_for_type(prefix: str, type_: str) -> str:
    """The subject an event of ``type_`` travels on: ``<prefix>.<type>``, odd characters escaped.

    Type segments become subject tokens. Characters NATS reserves (``*`` and ``>`` wildcards,
    whitespace, ``$``), non-ASCII text and our escape character ``%`` are percent-encoded
    (UTF-8), and an empty segment becomes ``%``, so every type maps to a valid subject and
    back (``type_for_subject``) without collisions.
    """
    if _PLAIN_TYPE.fullmatch(type_):
        return f"{prefix}.{type_}"
    return prefix + "." + ".".join(_escape_segment(s) for s in type_.split("."))


def type_for_subject(prefix: str, subject: str) -> str | None:
    """The event type a subject carries, or None when it is not under ``prefix``."""
    head = prefix + "."
    if not subject.startswith(head):
        return None
    rest = subject[len(head) :]
    if "%" not in rest:
        return rest
    return ".".join(_unescape_segment(t) for t in rest.split("."))


def filter_subject(prefix: str, pattern: Pattern) -> tuple[str, bool]:
    """The narrowest single NATS filter covering ``pattern``, and whether it is exact.

    ``*`` maps to ``*``. A ``**`` followed by more segments maps to ``>`` (it can never match
    nothing there, since a segment follows). A trailing ``**`` may match zero segments, which
    NATS ``>`` cannot: ``x.*.**`` is exactly ``x.>``, but ``x.a.**`` (which matches ``x.a``)
    widens to ``x.>``. When not exact, the subscription post-filters with the pattern.
    """
    segs = pattern.segments
    toks = [s if s in ("*", "**") else _escape_segment(s) for s in segs]
    if "**" not in segs:
        return ".".join([prefix, *toks]), True
    i = segs.index("**")
    last = i == len(segs) - 1
    if not last:
        return ".".join([prefix, *toks[:i], ">"]), False
    if i == 0:
        return f"{prefix}.>", True
    exact = segs[i - 1] == "*"  # '*.**' is one or more segments: exactly '>'
    return ".".join([prefix, *toks[: i - 1], ">"]), exact


# ---- helpers -------------------------------------------------------------------------------


def _redact(url: str) -> str:
    """NATS puts a token or a user alone in the userinfo, so all of it goes; the query's
    credential parameters too (``redact_url``)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return redact_url(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return redact_url(urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, "")))


def _header_value(text: str) -> str:
    """Header values cannot span lines; keep them on one and bounded."""
    return " ".join(text.split())[:2000]


class NatsTransport:
    """NATS JetStream (durable, at-least-once) or core NATS transport; see the module docstring.

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
        if scheme not in ("nats", "tls"):
            raise TransportError(f"NATS URL {_redact(url)!r}: expected nats:// or tls://")
        query = dict(parse_qsl(parts.query))
        _OPT.unknown(query, _TIDINGS_PARAMS, noun="parameter", where=f"NATS URL {_redact(url)!r}")
        self.url = _redact(url)  # what logs and health may show; the password stays in _server
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

    # ---- publish ---------------------------------------------------------------------------

    def _client(self) -> Client:
        if self._nc is None:
            state = "closed" if self._closed else "not started (await transport.start())"
            raise TransportError(f"NATS transport for {self._where} is {state}")
        return self._nc

    def _jetstream(self) -> JetStreamContext:
        self._client()
        assert self._js is not None, "JetStream context exists in jetstream mode"
        return self._js

    def subject_of(self, type_: str) -> str:
        subject = self._subjects.get(type_)
        if subject is None:
            if len(self._subjects) > 10_000:
                self._subjects.clear()
            subject = self._subjects[type_] = subject_for_type(self.prefix, type_)
        return subject

    async def publish(self, event: Event) -> None:
        subject = self.subject_of(event.type)
        body = encode(event)
        if self.mode == "core":
            nc = self._client()
            try:
                await nc.publish(subject, body)
                await nc.flush(timeout=self._flush_timeout)
            except Exception as exc:
                raise self._publish_error(event, exc) from exc
        else:
            await self._publish_one(subject, body, {_MSG_ID: event.id}, event)
        self.stats.published += 1

    async def _publish_one(
        self, subject: str, body: bytes, headers: dict[str, str], event: Event | None
    ) -> PubAck:
        """Publish and wait for the PubAck, retrying transient failures until publish_timeout.

        Retrying is safe: the message id makes JetStream store a repeated publish only once.
        """
        js = self._jetstream()
        deadline = time.monotonic() + self._publish_timeout
        backoff = Backoff(0.05, cap=0.5)
        while True:
            left = deadline - time.monotonic()
            try:
                return await js.publish(
                    subject, body, timeout=max(0.05, min(2.0, left)), headers=dict(headers)
                )
            except _TRANSIENT as exc:
                if self._closed or time.monotonic() + backoff.next > deadline:
                    raise self._publish_error(event, exc) from exc
                if isinstance(exc, jerr.NoStreamResponseError) and backoff.next >= 0.2:
                    # Still no stream for the subject: the server may have lost it (memory
                    # storage and a restart); put it back (a no-op if it exists).
                    with contextlib.suppress(Exception):
                        await self._ensure_streams()
                await backoff.sleep()
            except Exception as exc:
                raise self._publish_error(event, exc) from exc

    async def _pub_acks(
        self, futures: list[asyncio.Future[PubAck]], epoch: int
    ) -> list[PubAck | BaseException]:
        """Wait for a window's PubAcks; give up early on the ones a reconnect lost.

        Messages in flight when the connection dropped never get a PubAck (or were never
        stored): once reconnected for a second, the rest are resent instead of waiting out
        the whole publish_timeout.
        """
        gathered = asyncio.gather(*futures, return_exceptions=True)
        deadline = time.monotonic() + self._publish_timeout
        while True:
            done, _ = await asyncio.wait({gathered}, timeout=0.25)
            if done:
                return list(gathered.result())
            now = time.monotonic()
            lost = self._reconnects != epoch and now - self._reconnected_at > 1.0
            if now > deadline or lost:
                gathered.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await gathered
                raise TimeoutError("PubAcks lost to a reconnect" if lost else "no PubAcks")

    def _publish_error(self, event: Event | None, exc: BaseException) -> TransportError:
        what = f"event {event.id} ({event.type})" if event is not None else "a message"
        err = TransportError(
            f"NATS {self._where}: publishing {what} failed: {describe(exc)} "
            f"(state {self._link.state.value}); it was not accepted, publish it again"
        )
        self._link.notify(err)
        return err

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Pipeline the batch: send a window of messages, then collect their PubAcks.

        On a failure inside a window the rest of that window is sent again one by one (the
        message ids make the ones already stored no-ops), so nothing is skipped and, in the
        usual case of a connection lost mid-batch, order is kept.
        """
        if not events:
            return
        if self.mode == "core":
            nc = self._client()
            try:
                for event in events:
                    await nc.publish(self.subject_of(event.type), encode(event))
                await nc.flush(timeout=self._flush_timeout)
            except Exception as exc:
                raise self._publish_error(events[0], exc) from exc
            self.stats.published += len(events)
            return
        js = self._jetstream()
        window = self._publish_window
        for start in range(0, len(events), window):
            chunk = events[start : start + window]
            items = [(self.subject_of(e.type), encode(e), e) for e in chunk]
            futures: list[asyncio.Future[PubAck]] = []
            failed_at: int | None = None
            epoch = self._reconnects
            try:
                for subject, body, event in items:
                    fut = await js.publish_async(subject, body, headers={_MSG_ID: event.id})
                    futures.append(fut)
                results = await self._pub_acks(futures, epoch)
                for index, result in enumerate(results):
                    if isinstance(result, BaseException):
                        failed_at = index
                        log.warning(
                            "NATS %s: publish in batch failed (%s); resending the rest",
                            self._where,
                            describe(result),
                        )
                        break
            except Exception as exc:
                for fut in futures:
                    fut.cancel()
                failed_at = next(
                    (i for i, f in enumerate(futures) if f.cancelled() or f.exception()),
                    len(futures),
                )
                log.warning(
                    "NATS %s: batch publish interrupted (%s); resending the rest",
                    self._where,
                    describe(exc),
                )
            if failed_at is not None:
                for subject, body, event in items[failed_at:]:
                    await self._publish_one(subject, body, {_MSG_ID: event.id}, event)
            self.stats.published += len(items)

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

    # ---- dead letters ----------------------------------------------------------------------

    def _dlq_subject(self, subscription: str) -> str:
        return dead_letter_name(self.prefix, subscription, lead="_")

    async def _write_dead_letter(
        self, dead: DeadMessage, subject: str | None, seq: int | None
    ) -> None:
        if self.mode == "core":
            kept = self._core_dead.setdefault(dead.subscription, [])
            kept.append(dead)
            if len(kept) > _CORE_DLQ_LIMIT:  # memory is all core mode has: keep it bounded
                del kept[0]
                log.error(
                    "NATS subscription %s: in-memory dead letters over %d, oldest dropped",
                    dead.subscription,
                    _CORE_DLQ_LIMIT,
                )
            return
        headers = {
            _HDR_ERROR: _header_value(dead.error) or "-",
            _HDR_ATTEMPTS: str(dead.attempts),
            _HDR_FAILED_AT: repr(dead.failed_at),
        }
        if dead.event_id is not None:
            headers[_HDR_EVENT_ID] = dead.event_id
        if dead.event_type is not None:
            headers[_HDR_EVENT_TYPE] = dead.event_type
        if subject is not None:
            headers[_HDR_SUBJECT] = subject
        if seq is not None:  # dead-lettering the same stored message twice keeps one copy
            headers[_MSG_ID] = f"dlq:{dead.subscription}:{seq}"
        await self._publish_one(self._dlq_subject(dead.subscription), dead.raw, headers, None)

    async def _dead_records(self, subscription: str, limit: int | None) -> list[tuple[int, Any]]:
        js = self._jetstream()
        subject = self._dlq_subject(subscription)
        found: list[tuple[int, Any]] = []
        seq = 1
        while limit is None or len(found) < limit:
            try:
                raw = await js.get_msg(self.dlq_stream, seq=seq, subject=subject, next=True)
            except jerr.NotFoundError:
                break
            except Exception as exc:
                raise TransportError(
                    f"NATS {self._where}: reading dead letters of {subscription!r} failed: "
                    f"{describe(exc)}"
                ) from exc
            assert raw.seq is not None
            found.append((raw.seq, raw))
            seq = raw.seq + 1
        return found

    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadMessage]:
        if self.mode == "core":
            return list(self._core_dead.get(subscription, [])[:limit])
        out: list[DeadMessage] = []
        for _seq, raw in await self._dead_records(subscription, limit):
            headers: dict[str, str] = raw.headers or {}
            out.append(
                DeadMessage(
                    subscription=subscription,
                    raw=raw.data or b"",
                    error=headers.get(_HDR_ERROR, ""),
                    attempts=int(headers.get(_HDR_ATTEMPTS, "0")),
                    failed_at=float(headers.get(_HDR_FAILED_AT, "0")),
                    event_id=headers.get(_HDR_EVENT_ID),
                    event_type=headers.get(_HDR_EVENT_TYPE),
                )
            )
        return out

    async def replay_dead_letters(self, subscription: str) -> int:
        """Publish each dead message again on its original subject, then delete it from the DLQ.

        Every subscription matching the subject sees the replayed message (a publish, like on
        the other backends). A crash between the two steps replays a message twice at worst.
        """
        if self.mode == "core":
            dead = self._core_dead.pop(subscription, [])
            nc = self._client()
            for d in dead:
                await nc.publish(self._replay_subject(d.event_type, None), d.raw)
            await nc.flush(timeout=self._flush_timeout)
            return len(dead)
        js = self._jetstream()
        count = 0
        for seq, raw in await self._dead_records(subscription, None):
            headers = raw.headers or {}
            subject = self._replay_subject(headers.get(_HDR_EVENT_TYPE), headers.get(_HDR_SUBJECT))
            msg_id = f"replay:{self.dlq_stream}:{seq}"
            await self._publish_one(subject, raw.data or b"", {_MSG_ID: msg_id}, None)
            with contextlib.suppress(jerr.NotFoundError):  # a concurrent replay removed it
                await js.delete_msg(self.dlq_stream, seq)
            count += 1
        return count

    def _replay_subject(self, event_type: str | None, subject: str | None) -> str:
        if subject:
            return subject
        if event_type:
            return self.subject_of(event_type)
        return f"{self.prefix}._undecodable"

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


# ---- subscriptions -------------------------------------------------------------------------


class _NatsSubscriptionBase:
    def __init__(
        self,
        transport: NatsTransport,
        pattern: Pattern,
        name: str,
        subject: str,
        exact: bool,
        handler: AsyncHandler,
        options: SubscribeOptions,
    ) -> None:
        self.name = name
        self.pattern = pattern.text
        self.group = options.group
        self.options = options
        self.filter_subject = subject
        self.lag: int | None = None
        self._transport = transport
        self._compiled = pattern
        self._exact = exact
        self._subject_matches = memoized(self._subject_matches_pattern)
        self._closed = False
        self._dispatcher = Dispatcher(
            name, handler, options, self._write_dead_letter, on_error=transport._link.notify
        )

    @property
    def stats(self) -> DispatchStats:
        return self._dispatcher.stats

    def _wanted(self, subject: str) -> bool:
        """Exact pattern check on the subject (for filters wider than the pattern)."""
        return self._exact or self._subject_matches(subject)

    def _subject_matches_pattern(self, subject: str) -> bool:
        type_ = type_for_subject(self._transport.prefix, subject)
        return type_ is not None and self._compiled.matches(type_)

    async def _write_dead_letter(self, dead: DeadMessage) -> None:
        raise NotImplementedError

    async def close(self, timeout: float = 5.0) -> None:
        raise NotImplementedError


def _decode(raw: bytes) -> tuple[Event | None, str | None]:
    try:
        return decode(raw), None
    except Exception as exc:
        return None, describe(exc)


class NatsJetStreamSubscription(_NatsSubscriptionBase):
    """A pull consumer fed by a continuous stream of pull requests; resumes after restarts.

    nats-py's ``fetch`` waits for a whole batch before returning what it has, which stalls a
    partly filled batch until the request expires (seconds, when MaxAckPending is shared by a
    group). Here the pull requests only grant credit: messages go to the Dispatcher the moment
    they arrive, and a pump keeps ``max_in_flight`` worth of credit outstanding.
    """

    _inbox_sub: Subscription | None = None
    _pump_task: asyncio.Task[None] | None = None
    _beat_task: asyncio.Task[None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Messages taken and not yet settled, by id(msg.data) (the Inbound's raw): the dead
        # letter sink finds the subject and sequence there; the heartbeat keeps them ours.
        self._held: dict[int, tuple[Msg, float]] = {}
        self._last_seq = 0  # stream sequence of the last message taken (for re-creation)
        self._credits = 0  # messages requested by pull requests and not yet arrived
        self._last_activity = self._last_msg_at = time.monotonic()
        self._wake = asyncio.Event()
        self._recreate = False
        self._inbox = ""
        self._next_subject = ""
        self._expires = 5.0  # seconds a pull request waits on the server
        self._stream_created: datetime | None = None  # tells a re-created stream apart
        self._refill = max(1, self.options.max_in_flight // 4)  # smallest pull request

    def _consumer_config(self, start_seq: int | None) -> ConsumerConfig:
        opts = self.options
        if start_seq is not None:
            policy, seq = DeliverPolicy.BY_START_SEQUENCE, start_seq
        elif opts.start == "earliest":
            policy, seq = DeliverPolicy.ALL, None
        else:
            policy, seq = DeliverPolicy.NEW, None
        return ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            deliver_policy=policy,
            opt_start_seq=seq,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=opts.ack_wait,
            max_ack_pending=opts.max_in_flight,
            filter_subject=self.filter_subject,
            inactive_threshold=None if self.group is not None else self._transport._broadcast_idle,
        )

    async def _create_consumer(self, start_seq: int | None = None) -> None:
        t = self._transport
        js = t._jetstream()
        try:
            try:
                info = await js.consumer_info(t.stream, self.name)
            except jerr.NotFoundError as exc:
                if exc.err_code == 10059:  # the stream is gone (memory storage and a restart)
                    await t._ensure_streams()
                if start_seq is not None:
                    stream = await js.stream_info(t.stream)
                    if stream.created != self._stream_created or (
                        stream.state.last_seq < start_seq - 1
                    ):
                        # The stream was re-created (or purged): its sequences started again,
                        # so everything in it is newer than what this subscription saw.
                        start_seq = max(1, stream.state.first_seq)
                        self._stream_created = stream.created
                await js.add_consumer(t.stream, self._consumer_config(start_seq))
            else:
                if info.config.filter_subject != self.filter_subject:
                    raise TransportError(
                        f"NATS consumer {self.name!r} on stream {t.stream!r} filters "
                        f"{info.config.filter_subject!r}, not {self.filter_subject!r}: one group "
                        "name serves one pattern; use another group name"
                    )
                current = info.config
                config = self._consumer_config(start_seq)
                if (
                    current.ack_wait != config.ack_wait
                    or current.max_ack_pending != config.max_ack_pending
                ):
                    current.ack_wait = config.ack_wait
                    current.max_ack_pending = config.max_ack_pending
                    await js.add_consumer(t.stream, current)  # updates a durable in place
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(
                f"NATS {t._where}: creating consumer {self.name!r} on stream {t.stream!r} "
                f"failed: {describe(exc)}"
            ) from exc

    async def start(self) -> None:
        t = self._transport
        nc = t._client()
        await self._create_consumer()
        try:
            self._stream_created = (await t._jetstream().stream_info(t.stream)).created
        except Exception as exc:
            raise TransportError(
                f"NATS {t._where}: reading stream {t.stream!r} failed: {describe(exc)}"
            ) from exc
        api_prefix = "$JS.API"
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{t.stream}.{self.name}"
        self._inbox = nc.new_inbox()
        self._inbox_sub = await nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        self._pump_task = asyncio.ensure_future(self._pump())
        self._beat_task = asyncio.ensure_future(self._heartbeat())

    def connection_restored(self) -> None:
        """The server may have forgotten our pull requests (restart): ask again at once."""
        self._credits = 0
        self._recreate = True
        self._wake.set()

    async def _pump(self) -> None:
        """Keep pull requests outstanding for every free slot; recover lost ones."""
        t = self._transport
        failures = 0
        last_lag_check = 0.0
        while not self._closed:
            self._wake.clear()
            now = time.monotonic()
            try:
                nc = t._nc
                if nc is None:
                    return
                if self._credits > 0 and now - self._last_activity > self._expires + 2.0:
                    # Neither a message nor the request's expiry notice came back: the server
                    # lost the requests (restart, consumer deleted). Check the consumer.
                    self._credits = 0
                    self._recreate = True
                if self._recreate and nc.is_connected:
                    await self._create_consumer(self._last_seq + 1 if self._last_seq else None)
                    self._recreate = False
                free = self.options.max_in_flight - self._dispatcher.in_flight - self._credits
                if free >= self._refill and nc.is_connected:
                    batch = min(free, 512)
                    request = b'{"batch":%d,"expires":%d}' % (batch, int(self._expires * 1e9))
                    if self._credits == 0:
                        self._last_activity = now  # the expiry clock starts with the request
                    self._credits += batch
                    await nc.publish(self._next_subject, request, reply=self._inbox)
                elif now - last_lag_check > self._expires and now - self._last_msg_at > 1.0:
                    # Nothing arrived lately, so no message metadata told us the lag: ask.
                    last_lag_check = now
                    await self._refresh_lag()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning(
                        "NATS subscription %s: pull failed (%d in a row): %s",
                        self.name,
                        failures,
                        describe(exc),
                    )
                    t._link.notify(exc)
                self._credits = 0
                self._recreate = True
                await asyncio.sleep(min(0.1 * failures, 2.0))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)

    async def _refresh_lag(self) -> None:
        t = self._transport
        if t._js is None:
            return
        try:
            info = await t._js.consumer_info(t.stream, self.name)
        except jerr.NotFoundError:
            self._recreate = True
            return
        except Exception:
            return
        self.lag = info.num_pending

    async def _on_msg(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        if not msg.reply:  # a status: 408 expired, 409 conflict, 100 heartbeat
            self._on_status(msg)
            return
        self._credits = max(0, self._credits - 1)
        self._last_msg_at = self._last_activity
        if self._closed:
            return  # not ours any more: AckWait hands it to another member
        meta = msg.metadata
        self._last_seq = meta.sequence.stream
        self.lag = meta.num_pending
        if not self._wanted(msg.subject):
            await msg.ack()  # not ours (a filter wider than the pattern): settle it unread
            self._wake.set()
            return
        raw = msg.data
        event, error = _decode(raw)
        key = id(raw)
        self._held[key] = (msg, time.monotonic())
        await self._dispatcher.submit(
            Inbound(
                raw=raw,
                event=event,
                ack=partial(self._ack, key, msg),
                nack=partial(self._nack, key, msg),
                delivery_count=meta.num_delivered,
                decode_error=error,
            )
        )

    def _on_status(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if status == "100":
            return
        pending = headers.get("Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            self._credits = max(0, self._credits - int(pending))
        else:
            self._credits = 0  # no count: assume every request ended
        if status not in ("404", "408"):
            description = headers.get("Description", "")
            log.info("NATS subscription %s: pull status %s %s", self.name, status, description)
            if "deleted" in description.lower():
                self._recreate = True
        self._wake.set()

    def _settled(self, key: int) -> None:
        self._held.pop(key, None)
        # Wake the pump only when enough slots are free for a new pull request (the settling
        # message still counts as in flight here, hence the +1).
        free = self.options.max_in_flight - self._dispatcher.in_flight - self._credits + 1
        if free >= self._refill:
            self._wake.set()

    async def _ack(self, key: int, msg: Msg) -> None:
        self._settled(key)
        await msg.ack()

    async def _nack(self, key: int, msg: Msg) -> None:
        self._settled(key)
        await msg.nak(delay=1.0)

    async def _heartbeat(self) -> None:
        """Tell the server we still work on held messages, so AckWait only catches the dead."""
        every = max(0.05, self.options.ack_wait / 3)
        while not self._closed:
            await asyncio.sleep(every)
            cutoff = time.monotonic() - every
            for key, (msg, taken) in list(self._held.items()):
                if taken <= cutoff and key in self._held:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    async def _write_dead_letter(self, dead: DeadMessage) -> None:
        held = self._held.get(id(dead.raw))
        subject = seq = None
        if held is not None:
            subject = held[0].subject
            seq = held[0].metadata.sequence.stream
        await self._transport._write_dead_letter(dead, subject, seq)

    async def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        t = self._transport
        inbox, self._inbox_sub = self._inbox_sub, None
        if inbox is not None:
            # No interest in the inbox any more: the server drops our pending pull requests.
            with contextlib.suppress(Exception):
                await inbox.unsubscribe()
        tasks = [task for task in (self._pump_task, self._beat_task) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = await self._dispatcher.close(timeout)
        if left:
            log.warning(
                "NATS subscription %s: %d message(s) unfinished at close stay unacked and "
                "will be redelivered after ack_wait",
                self.name,
                left,
            )
        self._held.clear()
        if self.group is None and t._js is not None:
            with contextlib.suppress(Exception):
                await t._js.delete_consumer(t.stream, self.name)
        t._subs.discard(self)


class NatsCoreSubscription(_NatsSubscriptionBase):
    """A core NATS subscription (a queue group for a tidings group): at-most-once."""

    _sub: Subscription | None = None

    async def start(self) -> None:
        nc = self._transport._client()
        queue = self.name if self.group is not None else ""
        self._sub = await nc.subscribe(self.filter_subject, queue=queue, cb=self._on_msg)
        await nc.flush(timeout=5)  # the server knows the interest before subscribe returns

    async def _on_msg(self, msg: Msg) -> None:
        if self._closed or not self._wanted(msg.subject):
            return
        event, error = _decode(msg.data)
        await self._dispatcher.submit(
            Inbound(raw=msg.data, event=event, ack=_noop, nack=_noop, decode_error=error)
        )

    async def _write_dead_letter(self, dead: DeadMessage) -> None:
        await self._transport._write_dead_letter(dead, None, None)

    async def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self._dispatcher.close(timeout)
        self._transport._subs.discard(self)


async def _noop() -> None:
    return None
