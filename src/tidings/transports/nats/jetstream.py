"""The JetStream subscription: a durable pull consumer fed by a stream of pull requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from functools import partial
from typing import Any

import nats.js.errors as jerr
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tidings.transport import DeadMessage, Inbound, TransportError
from tidings.transports.common import decode_body, describe
from tidings.transports.nats.subscription import _NatsSubscriptionBase

log = logging.getLogger("tidings.transports.nats")


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
        event, error = decode_body(raw)
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
