"""A published message (shared by every subscription it goes to) and one delivery of it
(a private copy for the handler)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from tidings.event import Event, EventError, decode, encode
from tidings.transport import (
    Inbound,
)
from tidings.transports.memory.snapshot import _plain_copy, _snapshot


class _Msg:
    """One published message: a pristine snapshot (or just the body) plus routing facts.

    Shared by every subscription it goes to and never handed to a handler itself: deliveries
    get copies, so the body encoded from it later is the body as published.
    """

    __slots__ = ("_raw", "deep", "delivery_count", "event", "forced", "key", "type")

    def __init__(
        self,
        event: Event | None,
        deep: tuple[str, ...],
        raw: bytes | None,
        type_: str,
        key: str | None,
        delivery_count: int = 1,
        forced: bool = False,
    ) -> None:
        self.event = event
        self.deep = deep
        self._raw = raw
        self.type = type_
        self.key = key
        self.delivery_count = delivery_count
        self.forced = forced  # handed back or nacked: enters the inbox beyond its bound

    @classmethod
    def of(cls, event: Event) -> _Msg:
        snap = _snapshot(event)
        if snap is None:
            return cls(None, (), encode(event), event.type, event.key)
        return cls(snap[0], snap[1], None, event.type, event.key)

    @property
    def raw(self) -> bytes:
        raw = self._raw
        if raw is None:
            assert self.event is not None
            raw = self._raw = encode(self.event)
        return raw

    def again(self, delivery_count: int) -> _Msg:
        """The same message for another delivery, entering the inbox beyond its bound."""
        return _Msg(self.event, self.deep, self._raw, self.type, self.key, delivery_count, True)

    def open(self) -> tuple[Event | None, str | None]:
        """This delivery's own event (or the decode error)."""
        snap: Any = self.event
        if snap is not None:
            event = snap.__copy__()
            for name in self.deep:
                setattr(event, name, _plain_copy(getattr(snap, name)))
            return event, None
        try:
            return decode(self.raw), None
        except EventError as exc:
            return None, f"undecodable message: {exc}"
        except Exception as exc:  # any other decoder failure is the same bad input
            return None, f"undecodable message: {type(exc).__name__}: {exc}"


class _Delivery(Inbound):
    """An Inbound whose body is encoded only if asked for (a dead letter needs it).

    Its ``__init__`` sets every Inbound field itself (checked below at import).
    """

    __slots__ = ("_msg",)

    def __init__(
        self,
        msg: _Msg,
        event: Event | None,
        error: str | None,
        ack: Callable[[], Any],
        nack: Callable[[], Any],
    ) -> None:
        self._msg = msg
        self.event = event
        self.ack = ack
        self.nack = nack
        self.delivery_count = msg.delivery_count
        self.decode_error = error

    @property
    def raw(self) -> bytes:
        return self._msg.raw

    @raw.setter
    def raw(self, value: bytes) -> None:
        msg = self._msg
        self._msg = _Msg(None, (), bytes(value), msg.type, msg.key, msg.delivery_count)


_DELIVERY_SETS = {"raw", "event", "ack", "nack", "delivery_count", "decode_error"}
if {f.name for f in dataclasses.fields(Inbound)} != _DELIVERY_SETS:  # pragma: no cover
    raise RuntimeError(
        "tidings.transport.Inbound changed its fields; update _Delivery in "
        "tidings/transports/memory/messages.py to set every one of them"
    )
