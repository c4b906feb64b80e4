"""Publishing on NATS: core publishes, JetStream publishes awaiting their PubAcks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import nats.errors as nerr
import nats.js.errors as jerr
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from tidings.event import Event, encode
from tidings.transport import TransportError, TransportStats
from tidings.transports.common import Backoff, ConnectionReporter, describe
from tidings.transports.nats.headers import _MSG_ID
from tidings.transports.nats.subjects import subject_for_type

log = logging.getLogger("tidings.transports.nats")

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


class NatsPublisher:
    """Publishing for ``NatsTransport``: core publishes, JetStream PubAcks, retries, batches.

    A mixin: the attributes below are set by ``NatsTransport.__init__``.
    """

    mode: str
    prefix: str
    stats: TransportStats
    _where: str
    _nc: Client | None
    _js: JetStreamContext | None
    _link: ConnectionReporter
    _closed: bool
    _publish_timeout: float
    _publish_window: int
    _flush_timeout: int
    _reconnects: int
    _reconnected_at: float
    _subjects: dict[str, str]

    async def _ensure_streams(self) -> None:
        raise NotImplementedError  # NatsTransport (lifecycle) creates the streams

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
