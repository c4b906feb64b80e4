"""Dead letters on NATS: written, listed and replayed (a DLQ stream; memory in core mode)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import nats.js.errors as jerr

from tidings.transport import DeadMessage, TransportError
from tidings.transports.common import dead_letter_name, describe
from tidings.transports.nats.headers import (
    _HDR_ATTEMPTS,
    _HDR_ERROR,
    _HDR_EVENT_ID,
    _HDR_EVENT_TYPE,
    _HDR_FAILED_AT,
    _HDR_SUBJECT,
    _MSG_ID,
    _header_value,
)
from tidings.transports.nats.publish import NatsPublisher

log = logging.getLogger("tidings.transports.nats")

_CORE_DLQ_LIMIT = 10_000


class NatsDeadLetters(NatsPublisher):
    """Dead letters for ``NatsTransport``: written to the DLQ stream (JetStream) or kept in
    memory (core), listed and replayed.
    """

    dlq_stream: str
    _core_dead: dict[str, list[DeadMessage]]

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
