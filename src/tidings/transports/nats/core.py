"""The core NATS subscription: plain subjects and queue groups, at-most-once."""

from __future__ import annotations

import contextlib

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tidings.transport import DeadMessage, Inbound
from tidings.transports.common import decode_body
from tidings.transports.nats.subscription import _NatsSubscriptionBase, _noop


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
        event, error = decode_body(msg.data)
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
