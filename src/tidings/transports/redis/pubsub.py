"""The Redis pub/sub consumer: fire-and-forget, one channel per event type."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis import exceptions as rexc

from tidings.topics import compile_pattern
from tidings.transport import AsyncHandler, Inbound, SubscribeOptions, TransportError
from tidings.transports.common import decode_body
from tidings.transports.redis.loops import _noop, _stop
from tidings.transports.redis.subscription import _RedisSubscriptionBase

if TYPE_CHECKING:
    from tidings.transports.redis.transport import RedisTransport


class RedisPubSubSubscription(_RedisSubscriptionBase):
    """A pub/sub listener: exact patterns SUBSCRIBE one channel, wildcards PSUBSCRIBE a prefix
    glob; either way the type is filtered exactly. No acks: what arrives while away is gone."""

    def __init__(
        self,
        transport: RedisTransport,
        name: str,
        pattern: str,
        matches: Callable[[str], bool],
        handler: AsyncHandler,
        options: SubscribeOptions,
    ) -> None:
        super().__init__(transport, name, pattern, matches, handler, options)
        self.group: str | None = None
        self.lag = 0  # nothing is kept for a pub/sub listener, so nothing is ever behind
        compiled = compile_pattern(pattern)
        self._channel_prefix = transport.channel("")
        if compiled.is_exact:
            self._exact: str | None = transport.channel(pattern)
            self._glob = ""
        else:
            self._exact = None
            literal: list[str] = []
            for seg in compiled.segments:
                if seg in ("*", "**"):
                    break
                literal.append(seg)
            self._glob = _glob_escape(transport.channel(".".join(literal))) + "*"
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None

    async def _connect(self) -> Any:
        pubsub: Any = self.transport.client.pubsub()
        if self._exact is not None:
            await pubsub.subscribe(self._exact)
        else:
            await pubsub.psubscribe(self._glob)
        # Wait for the confirmation so a publish made after subscribe() returns is seen.
        deadline = time.monotonic() + self.transport.connect_timeout
        while time.monotonic() < deadline:
            msg = await pubsub.get_message(timeout=0.5)
            if msg is not None and msg["type"] in ("subscribe", "psubscribe"):
                return pubsub
        await pubsub.aclose()
        raise rexc.TimeoutError("no subscribe confirmation from the server")

    async def open(self) -> None:
        try:
            self._pubsub = await self._connect()
        except (rexc.RedisError, OSError) as exc:
            self.transport._report(exc, f"subscribe {self.pattern!r}")
            raise TransportError(
                f"subscribe {self.pattern!r}: Redis at {self.transport.server}: {exc}"
            ) from None
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        transport = self.transport
        backoff = transport._backoff()
        cut = len(self._channel_prefix)
        while not self._closed:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._connect()
                    transport._link.connected()
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                transport._report(exc, f"subscription {self.name}: pub/sub")
                if self._pubsub is not None:
                    with contextlib.suppress(Exception):
                        await self._pubsub.aclose()
                    self._pubsub = None
                await backoff.sleep()
                continue
            if msg is None or msg.get("type") not in ("message", "pmessage"):
                continue
            channel = msg["channel"]
            type_name = (channel.decode() if isinstance(channel, bytes) else channel)[cut:]
            if not self._wanted(type_name):
                continue
            body: bytes = msg["data"]
            event, error = decode_body(body)
            await self._dispatcher.submit(
                Inbound(raw=body, event=event, ack=_noop, nack=_noop, decode_error=error)
            )

    async def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            await _stop([self._task])
        await self._dispatcher.close(timeout)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        self.transport._forget(self)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
