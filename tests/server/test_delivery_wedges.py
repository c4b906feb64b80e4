"""Deliveries that once got stuck or made the worker spin, whatever the stored data says.

Endpoints are saved straight into the queue here, past the API's and the config's validation,
as an old row or a hand-edited database would hold them: a header the HTTP client refuses to
send, a timeout at or above the server's lease. Each must end as a recorded attempt (retried by
policy, then dead) or a delivery, never as a delivery `delivering` for good or a busy loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.server.conftest import Received, Receiver, Running
from tests.server.test_webhooks import deliveries, events_config, one_event, wait_until
from tidings.webhooks.endpoint import Endpoint

Start = Callable[..., Awaitable[Running]]
MakeReceiver = Callable[..., Awaitable[Receiver]]


async def inject(app: Running, ep: Endpoint) -> None:
    """Save ``ep`` as it is, bypassing validation, and let the service route to it."""
    await asyncio.to_thread(app.service.queue.save_endpoint, ep)
    await app.service.endpoints_changed()


async def attempt_errors(app: Running, delivery_id: str) -> list[str | None]:
    status, detail = await app.get(f"/deliveries/{delivery_id}")
    assert status == 200, detail
    return [a["error"] for a in detail["attempt_log"]]


# ---- any exception while building or sending a request is a failed attempt ---------------


@pytest.mark.parametrize("sender_process", [False, True], ids=["in-process", "sender-process"])
async def test_a_header_the_client_refuses_is_a_failed_attempt_not_a_stuck_delivery(
    serve: Start, receiver: MakeReceiver, sender_process: bool
) -> None:
    rec = await receiver()
    app = await serve(
        {**events_config(max_retries=1), "server": {"sender_process": sender_process}}
    )
    bad = Endpoint(
        id="crlf",
        url=rec.url,
        headers={"X-A": "a\r\nB: c"},
        max_retries=1,
        retry_delay=0.05,
        max_delay=0.1,
        jitter=0,
    )
    await inject(app, bad)
    await inject(app, Endpoint(id="good", url=rec.url, events=("**",)))
    await one_event(app)

    async def dead() -> list[dict[str, Any]]:
        return await deliveries(app, state="dead", endpoint_id="crlf")

    try:
        await wait_until(dead, timeout=10, what="the bad-header delivery to end up dead")
    except AssertionError:
        rows = await deliveries(app, endpoint_id="crlf")
        raise AssertionError(f"deliveries of the bad endpoint: {rows}") from None
    (row,) = await dead()
    errors = await attempt_errors(app, row["id"])
    assert len(errors) == 2, f"the first attempt and one retry, each recorded: {errors}"
    assert all(e and "ValueError" in e for e in errors), errors
    await rec.wait_for(1)  # the good endpoint got its request
    assert all("X-A" not in r.headers for r in rec.requests)
    await wait_until(
        lambda: app.service.worker.in_flight == 0 and app.service.worker.claimed == 0,
        what="nothing left in flight",
    )
    status, health = await app.get("/health")
    assert status == 200 and health["workers"]["in_flight"] == 0, health


@pytest.mark.parametrize("sender_process", [False, True], ids=["in-process", "sender-process"])
async def test_a_sender_that_raises_fails_the_attempt_and_retries(
    serve: Start, receiver: MakeReceiver, sender_process: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong inside the sender (here: the HTTP client itself raising), the
    attempt is recorded with its error and retried by policy, then delivered."""
    rec = await receiver()
    app = await serve(
        {**events_config(max_retries=3), "server": {"sender_process": sender_process}}
    )
    await inject(
        app, Endpoint(id="e", url=rec.url, max_retries=3, retry_delay=0.05, max_delay=0.1, jitter=0)
    )
    calls = 0
    sender = app.service.worker._sender
    real = sender.send

    async def flaky(request: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the sender broke")
        return await real(request)

    monkeypatch.setattr(sender, "send", flaky)
    await one_event(app)
    await wait_until(lambda: _count(app, "delivered"), what="delivered after the failed attempt")
    (row,) = await deliveries(app, state="delivered")
    errors = await attempt_errors(app, row["id"])
    assert len(errors) == 2 and errors[1] is None, errors
    assert errors[0] is not None and "RuntimeError: the sender broke" in errors[0], errors


async def _count(app: Running, state: str, n: int = 1) -> bool:
    return len(await deliveries(app, state=state)) >= n


async def test_the_sender_process_answers_every_request_even_those_it_cannot_send(
    serve: Start, receiver: MakeReceiver
) -> None:
    """The child never leaves a request unanswered: a header aiohttp refuses fails in the child,
    a header the pipe cannot carry fails in the parent, and a good request sent in the same
    batch is not taken down with them."""
    rec = await receiver()
    app = await serve({**events_config(), "server": {"sender_process": True}})
    from tidings.webhooks.sender import Request  # noqa: PLC0415

    sender = app.service.worker._sender
    crlf = Request(10**9, rec.url, {"X-A": "a\r\nB: c"}, b"{}", 2.0, False)
    surrogate = Request(10**9 + 1, rec.url, {"X-B": "\udcff"}, b"{}", 2.0, False)
    good = Request(10**9 + 2, rec.url, {"X-C": "c"}, b"{}", 2.0, False)
    answers = await asyncio.wait_for(
        asyncio.gather(sender.send(crlf), sender.send(surrogate), sender.send(good)), 10
    )
    by_id = {a.id: a for a in answers}
    assert by_id[crlf.id].status is None and "ValueError" in (by_id[crlf.id].error or "")
    assert by_id[surrogate.id].status is None
    assert "UnicodeEncodeError" in (by_id[surrogate.id].error or ""), by_id[surrogate.id]
    assert by_id[good.id].status == 200, by_id[good.id]
    assert [r.headers.get("X-C") for r in rec.requests] == ["c"]


# ---- a timeout at or above the lease ------------------------------------------------------


@pytest.mark.parametrize("sender_process", [False, True], ids=["in-process", "sender-process"])
async def test_a_timeout_above_the_lease_still_delivers_without_spinning(
    serve: Start,
    receiver: MakeReceiver,
    sender_process: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.webhooks")
    rec = await receiver()
    app = await serve(
        {
            **events_config(timeout="0.5s"),
            "server": {"lease": "1s", "sender_process": sender_process},
        }
    )
    await inject(app, Endpoint(id="slowcfg", url=rec.url, timeout=10.0))
    queue = app.service.queue
    claims = 0
    real = queue.aclaim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(queue, "aclaim", counted)
    await one_event(app)
    await rec.wait_for(1, timeout=5)
    await wait_until(lambda: _count(app, "delivered"), what="the delivery recorded")
    before = claims
    t0 = time.monotonic()
    await asyncio.sleep(1.0)  # measuring an idle second, not waiting for a condition
    rounds = claims - before
    assert rounds < 20, f"{rounds} claim rounds in {time.monotonic() - t0:.2f}s while idle"
    warnings = [r.getMessage() for r in caplog.records if "slowcfg" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "server.lease" in warnings[0] and "timeout" in warnings[0]


async def test_a_hanging_receiver_behind_a_timeout_above_the_lease_fails_cleanly(
    serve: Start, receiver: MakeReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request is cut below the lease and recorded as timed out (retried, then dead)."""
    release = asyncio.Event()

    async def hang(req: Received, n: int) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    rec = await receiver(hang)
    app = await serve({**events_config(timeout="0.2s"), "server": {"lease": "0.8s"}})
    await inject(
        app, Endpoint(id="hangs", url=rec.url, timeout=30.0, max_retries=0, retry_delay=0.05)
    )
    try:
        await one_event(app)
        await wait_until(lambda: _count(app, "dead"), timeout=10, what="a dead delivery")
        (row,) = await deliveries(app, state="dead")
        errors = await attempt_errors(app, row["id"])
        assert len(errors) == 1 and errors[0] is not None and "timed out" in errors[0], errors
        seconds = float(errors[0].split("after ")[1].rstrip("s"))
        assert seconds < 0.8, f"the request must end within the lease: {errors[0]}"
    finally:
        release.set()
