"""NATS JetStream passes the transport contract; plus what is NATS-specific (subjects, core mode).

The shared server on 127.0.0.1:4222 hosts a fresh stream + subject prefix per test; the restart
test runs its own nats-server on a free port with its own store directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import require_service
from tests.contract.transport_contract import Collector, TransportContract, make_event
from tidings.retry import RetryPolicy
from tidings.topics import compile_pattern
from tidings.transport import SubscribeOptions, TransportError, TransportState
from tidings.transports import open_transport
from tidings.transports.nats import (
    NatsTransport,
    filter_subject,
    subject_for_type,
    type_for_subject,
)

HOST, PORT = "127.0.0.1", 4222
SERVER = f"nats://{HOST}:{PORT}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nats-server did not listen on {HOST}:{port} within {timeout}s")


async def _drop_streams(url: str, *names: str) -> None:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
    finally:
        await nc.close()


class PrivateNats:
    """A nats-server with JetStream on a free port and a temp store, killable with SIGKILL."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.store = tempfile.mkdtemp(prefix="tidings-nats-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"nats://{HOST}:{self.port}?stream=RS&prefix=rs"

    def start(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            pytest.skip("SKIPPED LOUDLY: nats-server is not on PATH; the restart test needs it")
        self.proc = subprocess.Popen(
            [binary, "-js", "-a", HOST, "-p", str(self.port), "-sd", self.store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    async def restart(self) -> None:
        self.kill()
        await asyncio.to_thread(self.start)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.store, ignore_errors=True)


@pytest.fixture
def private_nats() -> Iterator[PrivateNats]:
    server = PrivateNats()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class TestNatsJetStreamContract(TransportContract):
    @pytest.fixture
    async def transport_url(self) -> AsyncIterator[str]:
        require_service("NATS", HOST, PORT)
        tag = uuid.uuid4().hex[:10]
        stream = f"TC_{tag}"
        yield f"{SERVER}?stream={stream}&prefix=tc_{tag}"
        await _drop_streams(SERVER, stream, f"{stream}_DLQ")

    @pytest.fixture
    def publish_raw(self, transport_url: str) -> Callable[[bytes, str], Awaitable[None]]:
        prefix = transport_url.split("prefix=")[1]

        async def publish(body: bytes, type_hint: str) -> None:
            nc = await nats.connect(SERVER)
            try:
                await nc.jetstream().publish(subject_for_type(prefix, type_hint), body)
            finally:
                await nc.close()

        return publish

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"nats://{HOST}:{_free_port()}"

    @pytest.fixture
    def restart_server(self, private_nats: PrivateNats) -> PrivateNats:
        return private_nats


# ---- NATS-specific -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "exact"),
    [
        ("a.b", "p.a.b", True),
        ("a.*", "p.a.*", True),
        ("*.b.*", "p.*.b.*", True),
        ("**", "p.>", True),
        ("*.**", "p.>", True),
        ("a.*.**", "p.a.>", True),
        ("a.**", "p.>", False),  # must also match 'a', which 'p.a.>' would not
        ("a.b.**", "p.a.>", False),
        ("a.**.z", "p.a.>", False),
        ("**.z", "p.>", False),
    ],
)
def test_pattern_to_filter_subject(pattern: str, subject: str, exact: bool) -> None:
    assert filter_subject("p", compile_pattern(pattern)) == (subject, exact)


def _nats_matches(filter_: str, subject: str) -> bool:
    """NATS subject-filter semantics: '*' one token, a trailing '>' one or more."""
    f, t = filter_.split("."), subject.split(".")
    for i, tok in enumerate(f):
        if tok == ">":
            return len(t) > i
        if i >= len(t) or (tok != "*" and tok != t[i]):
            return False
    return len(f) == len(t)


_SEGS = st.sampled_from(["a", "b", "z", "*", "**"])
_TYPE_SEGS = st.sampled_from(["a", "b", "z", "x y", "*"])


@given(st.lists(_SEGS, min_size=1, max_size=4), st.lists(_TYPE_SEGS, min_size=1, max_size=5))
def test_filter_subject_covers_the_pattern_and_is_exact_when_it_says_so(
    pattern: list[str], type_segments: list[str]
) -> None:
    compiled = compile_pattern(".".join(pattern))
    type_ = ".".join(type_segments)
    filter_, exact = filter_subject("p", compiled)
    native = _nats_matches(filter_, subject_for_type("p", type_))
    if compiled.matches(type_):
        assert native, f"{filter_} misses {type_!r}, which {compiled.text!r} matches"
    elif exact:
        assert not native, f"{filter_} lets {type_!r} through though it claims to be exact"


def test_odd_type_segments_are_escaped_reversibly() -> None:
    for type_, subject in [
        ("order.created", "t.order.created"),
        ("a b.c", "t.a%20b.c"),
        ("a.*", "t.a.%2A"),
        ("a.>", "t.a.%3E"),
        ("a..b", "t.a.%.b"),
        ("100%.x", "t.100%25.x"),
        ("café.€", "t.caf%C3%A9.%E2%82%AC"),
        ("$SYS.x", "t.%24SYS.x"),
    ]:
        assert subject_for_type("t", type_) == subject
        assert type_for_subject("t", subject) == type_
    assert type_for_subject("t", "other.a") is None


@given(st.lists(st.text(max_size=6), min_size=1, max_size=4))
def test_escaping_round_trips_and_makes_valid_tokens(segments: list[str]) -> None:
    type_ = ".".join(segments)
    subject = subject_for_type("t", type_)
    tokens = subject.split(".")
    assert all(tok and tok not in ("*", ">") for tok in tokens), subject
    assert all(0x21 <= ord(ch) < 0x7F for ch in subject), subject
    assert type_for_subject("t", subject) == type_


def test_bad_url_options_are_clear_errors() -> None:
    with pytest.raises(TransportError, match="unknown parameter"):
        open_transport(f"{SERVER}?stram=X")
    with pytest.raises(TransportError, match="stream name"):
        open_transport(f"{SERVER}?stream=a.b")
    with pytest.raises(TransportError, match="prefix"):
        open_transport(f"{SERVER}?prefix=a.*")
    with pytest.raises(TransportError, match="mode"):
        open_transport(f"{SERVER}?mode=push")


def test_tls_scheme_keeps_tls_for_the_client() -> None:
    transport = open_transport("tls://nats.example:4443?stream=S")
    assert isinstance(transport, NatsTransport)
    assert transport._server == "tls://nats.example:4443"
    assert transport.stream == "S" and transport.prefix == "tidings"


async def test_password_is_not_in_urls_or_errors() -> None:
    with pytest.raises(TransportError) as info:
        NatsTransport("nats://user:s3cret@127.0.0.1:4222?bogus=1")
    assert "s3cret" not in str(info.value)
    transport = NatsTransport(f"nats://user:s3cret@{HOST}:{_free_port()}", connect_timeout=0.5)
    assert "s3cret" not in transport.url
    with pytest.raises(TransportError) as info:
        await transport.start()
    assert "s3cret" not in str(info.value) and "***@" in str(info.value)
    assert "s3cret" not in str(transport.health())


async def _nats_transport(url: str, **opts: Any) -> NatsTransport:
    transport = open_transport(url, **opts)
    assert isinstance(transport, NatsTransport)
    await transport.start()
    return transport


@pytest.fixture
async def fresh_url() -> AsyncIterator[str]:
    require_service("NATS", HOST, PORT)
    tag = uuid.uuid4().hex[:10]
    yield f"{SERVER}?stream=TN_{tag}&prefix=tn_{tag}"
    await _drop_streams(SERVER, f"TN_{tag}", f"TN_{tag}_DLQ")


async def test_events_travel_on_prefixed_subjects_with_msg_id_dedupe(fresh_url: str) -> None:
    transport = await _nats_transport(fresh_url)
    try:
        event = make_event("order.created", key="o1")
        await transport.publish(event)
        await transport.publish(event)  # a retried publish: the same id is stored once
        await transport.publish_many([event, make_event("order.paid", key="o1")])
        nc = await nats.connect(SERVER)
        try:
            info = await nc.jetstream().stream_info(transport.stream)
            assert info.state.messages == 2
            got = await nc.jetstream().get_msg(transport.stream, seq=1)
            assert got.subject == f"{transport.prefix}.order.created"
            assert got.headers is not None and got.headers["Nats-Msg-Id"] == event.id
        finally:
            await nc.close()
    finally:
        await transport.close()


async def test_a_double_star_pattern_also_gets_its_bare_prefix_type(fresh_url: str) -> None:
    transport = await _nats_transport(fresh_url)
    try:
        got = Collector()
        sub = await transport.subscribe("order.**", got)
        types = ["order", "order.created", "order.line.added", "orders.x", "other.order"]
        await transport.publish_many([make_event(t) for t in types])
        await TransportContract.wait_for(lambda: got.count() >= 3, 10, "three matching types")
        await asyncio.sleep(0.3)  # anything extra would show up now
        assert sorted(e.type for e in got.events) == ["order", "order.created", "order.line.added"]
        assert sub.stats.received == 3  # the two others were acked without reaching handlers
    finally:
        await transport.close()


async def test_group_resumes_where_it_left_off(fresh_url: str) -> None:
    opts = SubscribeOptions(group="billing")
    first = await _nats_transport(fresh_url)
    got = Collector()
    await first.subscribe("inv.*", got, opts)
    await first.publish(make_event("inv.sent"))
    await TransportContract.wait_for(lambda: got.count() == 1, 10, "the first event")
    await first.close()
    assert got.count() == 1
    second = await _nats_transport(fresh_url)
    try:
        missed = make_event("inv.paid")
        await second.publish(missed)  # nobody of the group is listening
        later = Collector()
        await second.subscribe("inv.*", later, opts)
        await TransportContract.wait_for(lambda: later.count() >= 1, 10, "the missed event")
        await asyncio.sleep(0.3)
        assert later.ids == [missed.id]
        assert second.health().lag == 0
    finally:
        await second.close()


async def test_unknown_server_without_jetstream_names_the_fix(fresh_url: str) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        ["nats-server", "-a", HOST, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(_wait_port, port)
        transport = open_transport(f"nats://{HOST}:{port}")
        with pytest.raises(TransportError, match="-js"):
            await transport.start()
        await transport.close()
        core = await _nats_transport(f"nats://{HOST}:{port}?mode=core")
        await core.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


async def test_core_mode_broadcast_groups_and_in_memory_dlq(fresh_url: str) -> None:
    url = fresh_url + "&mode=core"
    t1, t2 = await _nats_transport(url), await _nats_transport(url)
    try:
        assert not t1.capabilities.persistent and not t1.capabilities.redelivery
        everyone, a, b = Collector(), Collector(), Collector()
        await t1.subscribe("job.**", everyone)
        await t1.subscribe("job.*", a, SubscribeOptions(group="w"))
        await t2.subscribe("job.*", b, SubscribeOptions(group="w"))
        events = [make_event("job.run", key=f"k{i % 5}", n=i) for i in range(200)]
        await t2.publish_many(events[:100])
        for event in events[100:]:
            await t2.publish(event)
        await TransportContract.wait_for(lambda: a.count() + b.count() >= 200, 10, "the group")
        await TransportContract.wait_for(lambda: everyone.count() >= 200, 10, "broadcast")
        await asyncio.sleep(0.2)
        assert sorted(a.ids + b.ids) == sorted(e.id for e in events)
        assert a.count() > 0 and b.count() > 0
        assert sorted(everyone.ids) == sorted(e.id for e in events)

        def refuse(event: Any) -> None:
            raise ValueError("no")

        sub = await t1.subscribe(
            "job.fail", refuse, SubscribeOptions(retry=RetryPolicy(max_retries=0))
        )
        bad = make_event("job.fail")
        await t2.publish(bad)
        # generous under load; on failure say whether the message reached t1 at all (the
        # broadcast subscription on the same connection sees it) and what the subscription did
        try:
            await TransportContract.wait_for(lambda: sub.stats.dead == 1, 30, "a dead letter")
        except AssertionError as exc:
            seen = bad.id in everyone.ids
            raise AssertionError(f"{exc}; broadcast saw it: {seen}; stats: {sub.stats}") from None
        dead = await t1.dead_letters(sub.name)
        assert [d.event_id for d in dead] == [bad.id]
        assert await t1.replay_dead_letters(sub.name) == 1
        await TransportContract.wait_for(lambda: sub.stats.dead == 2, 30, "the replay to fail")
    finally:
        await t1.close()
        await t2.close()
    assert t1.health().state is TransportState.CLOSED


@pytest.mark.timeout(60)
async def test_broadcast_subscription_survives_restart(private_nats: PrivateNats) -> None:
    transport = await _nats_transport(private_nats.url, publish_timeout=20.0)
    try:
        got = Collector()
        await transport.subscribe("rs.bc", got)
        before = [make_event("rs.bc", n=i) for i in range(50)]
        await transport.publish_many(before)
        await TransportContract.wait_for(lambda: got.count() >= 50, 10, "before restart")
        await private_nats.restart()
        after = [make_event("rs.bc", n=i) for i in range(50)]
        await transport.publish_many(after)
        want = {e.id for e in before + after}
        await TransportContract.wait_for(lambda: want <= set(got.ids), 30, "after restart")
        assert transport.health().ok
    finally:
        await transport.close()


@pytest.mark.timeout(60)
async def test_publish_waits_out_a_short_outage(private_nats: PrivateNats) -> None:
    errors: list[BaseException] = []
    transport = await _nats_transport(
        private_nats.url, publish_timeout=20.0, on_error=errors.append
    )
    try:
        got = Collector()
        await transport.subscribe("rs.out", got, SubscribeOptions(group="g"))
        private_nats.kill()
        event = make_event("rs.out")
        pending = asyncio.ensure_future(transport.publish(event))
        await asyncio.sleep(1.5)
        assert not pending.done(), "publish returned while the server was down"
        assert not transport.health().ok
        with pytest.raises(TransportError):
            await transport.ping()
        await asyncio.to_thread(private_nats.start)
        await asyncio.wait_for(pending, 20)
        await TransportContract.wait_for(lambda: got.ids == [event.id], 15, "the event")
        assert transport.health().ok
        assert errors, "the lost connection was not reported to on_error"
        assert transport.health().last_error is not None
    finally:
        await transport.close()


@pytest.mark.timeout(60)
async def test_memory_stream_is_recreated_after_restart(private_nats: PrivateNats) -> None:
    url = private_nats.url + "&storage=memory"
    # The subscriber reconnects slowly, so a fresh publisher re-creates the lost stream and
    # fills it first: the re-created consumer must start at the new stream's beginning, not
    # at the sequence it had reached in the old one.
    transport = await _nats_transport(url, reconnect_wait=2.0)
    try:
        got = Collector()
        await transport.subscribe("rs.mem", got, SubscribeOptions(group="g"))
        await transport.publish_many([make_event("rs.mem") for _ in range(5)])
        await TransportContract.wait_for(lambda: got.count() == 5, 10, "before restart")
        await private_nats.restart()  # a memory stream (and its consumer) is gone now
        publisher = await _nats_transport(url)
        try:
            after = [make_event("rs.mem") for _ in range(3)]
            await publisher.publish_many(after)
        finally:
            await publisher.close()
        want = {e.id for e in after}
        await TransportContract.wait_for(lambda: want <= set(got.ids), 20, "after restart")
        assert got.count() == 8
    finally:
        await transport.close()


@pytest.mark.timeout(60)
async def test_publish_many_through_a_restart_stores_each_event_once_in_order(
    private_nats: PrivateNats,
) -> None:
    transport = await _nats_transport(private_nats.url, publish_timeout=5.0)
    try:
        events = [make_event("rs.batch", n=i) for i in range(3000)]
        pending = asyncio.ensure_future(transport.publish_many(events))
        await asyncio.sleep(0.05)  # part of the batch is out, part is not
        await private_nats.restart()
        await asyncio.wait_for(pending, 40)
        nc = await nats.connect(f"nats://{HOST}:{private_nats.port}")
        try:
            js = nc.jetstream()
            assert (await js.stream_info("RS")).state.messages == len(events)
            ids: list[str] = []
            for seq in range(1, len(events) + 1):
                stored = await js.get_msg("RS", seq)
                assert stored.headers is not None
                ids.append(stored.headers["Nats-Msg-Id"])
        finally:
            await nc.close()
        assert ids == [e.id for e in events], "the batch was stored out of order"
    finally:
        await transport.close()


async def test_lag_counts_what_waits_on_the_server(fresh_url: str) -> None:
    transport = await _nats_transport(fresh_url)
    try:
        release = asyncio.Event()
        seen: list[str] = []

        async def blocked(event: Any) -> None:
            seen.append(event.id)
            await release.wait()

        await transport.subscribe("lag.*", blocked, SubscribeOptions(max_in_flight=1))
        await transport.publish_many([make_event("lag.x", key="k") for _ in range(10)])
        await TransportContract.wait_for(lambda: len(seen) == 1, 10, "the first event")
        assert transport.health().lag == 9
        release.set()
        await TransportContract.wait_for(lambda: len(seen) == 10, 10, "all ten")
        assert transport.health().lag == 0
    finally:
        await transport.close()


async def _delete_consumer(nc: Any, stream: str, name: str) -> None:
    """What an operator does, retried: the server's file store can refuse a delete while the
    consumer is still writing its state (err_code 10051, 'directory not empty')."""
    deadline = time.monotonic() + 10
    while True:
        try:
            await nc.jetstream().delete_consumer(stream, name)
            return
        except nats.js.errors.NotFoundError:
            return  # an earlier refused attempt removed it after all
        except nats.js.errors.ServerError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"the server would not delete consumer {name}: {exc}") from exc
            await asyncio.sleep(0.1)


async def test_consumer_deleted_by_an_operator_is_recreated(fresh_url: str) -> None:
    transport = await _nats_transport(fresh_url)
    try:
        got = Collector()
        sub = await transport.subscribe("ops.*", got, SubscribeOptions(group="g"))
        first = make_event("ops.x")
        await transport.publish(first)
        await TransportContract.wait_for(lambda: got.count() == 1, 10, "the first event")
        nc = await nats.connect(SERVER)
        try:
            await _delete_consumer(nc, transport.stream, sub.name)
        finally:
            await nc.close()
        second = make_event("ops.x")
        await transport.publish(second)
        await TransportContract.wait_for(lambda: second.id in got.ids, 15, "after the delete")
        assert got.ids.count(first.id) == 1
    finally:
        await transport.close()


def test_nats_server_binary_present_or_loud() -> None:
    if shutil.which("nats-server") is None and os.environ.get("CI"):
        pytest.fail("CI needs nats-server on PATH for the restart tests")
