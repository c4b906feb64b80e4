"""tidings.context: request metadata applied to events, nested and isolated per context."""

from __future__ import annotations

import asyncio

import pytest

from tidings.context import apply, current, event_context, trace_id_of
from tidings.event import Event

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_apply_fills_only_what_the_event_leaves_unset() -> None:
    with (
        event_context(correlation_id="c", user_id="u", traceparent=TRACEPARENT),
        event_context(tenant_id="t", user_id=None),  # None keeps the outer value
    ):
        event = apply(Event(type="ctx.test", correlation_id="own"))
        assert current() is not None and current().user_id == "u"  # type: ignore[union-attr]
    assert (event.correlation_id, event.user_id, event.tenant_id) == ("own", "u", "t")
    assert event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert event.extensions == {"traceparent": TRACEPARENT}
    assert current() is None
    assert apply(Event(type="ctx.test")).correlation_id is None


def test_concurrent_tasks_keep_their_own_metadata() -> None:
    async def one(n: int) -> str | None:
        with event_context(request_id=f"r{n}"):
            await asyncio.sleep(0.01 * (3 - n))
            return apply(Event(type="ctx.test")).request_id

    async def main() -> list[str | None]:
        return list(await asyncio.gather(*(one(n) for n in range(3))))

    assert asyncio.run(main()) == ["r0", "r1", "r2"]


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="unknown field"), event_context(usr="x"):
        pass
    assert trace_id_of("not-a-traceparent") is None
