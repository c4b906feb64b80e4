"""The consumer: one aiokafka consumer per subscription, committing acked offsets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from tidings.event import Event
from tidings.topics import Pattern, memoized
from tidings.transport import AsyncHandler, DeadMessage, Inbound, SubscribeOptions, TransportError
from tidings.transports.common import decode_body
from tidings.transports.dispatch import Dispatcher
from tidings.transports.kafka.offsets import _Handle, _Partition
from tidings.transports.kafka.options import _CONNECT_ERRORS
from tidings.transports.kafka.records import H_REPLAY, H_TYPE
from tidings.transports.kafka.topics import topic_regex

if TYPE_CHECKING:
    from tidings.transports.kafka.transport import KafkaTransport


log = logging.getLogger("tidings.transports.kafka")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: KafkaSubscription) -> None:
        self.sub = sub

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.sub._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.sub._on_assigned(set(assigned))


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
        event, error = decode_body(raw)
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
