"""Kafka topic names (legal names, the regex of a pattern) and creating topics on first use."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from aiokafka.admin import NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from tidings.topics import Pattern
from tidings.transport import TransportError
from tidings.transports.common import dead_letter_name

_LEGAL_TOPIC = re.compile(r"[A-Za-z0-9._-]*")
_MAX_TOPIC = 249
_TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS


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


def _check_topic(topic: str, what: str) -> None:
    if not topic or len(topic) > _MAX_TOPIC or not _LEGAL_TOPIC.fullmatch(topic):
        raise TransportError(
            f"kafka: {what} gives the topic name {topic!r}, which Kafka refuses (1-249 "
            "characters of A-Z a-z 0-9 . _ -); choose another prefix/topic or event type"
        )


class _Topics:
    """Topic naming and creation, shared by publishing, subscribing and the dead letters."""

    prefix: str
    topic: str
    topic_per_type: bool
    partitions: int
    replication: int
    connect_timeout: float
    publish_timeout: float
    _admin: Any
    _topics: dict[str, asyncio.Future[None]]

    if TYPE_CHECKING:

        def _where(self) -> str: ...

        def _require(self) -> Any: ...

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
