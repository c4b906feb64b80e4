"""The transport contract against a private Tansu broker, plus Kafka-specific behaviour.

One Tansu process (in memory) serves the whole module; every test gets its own topic prefix.
The restart test gets its own durable Tansu (S3 storage on a private moto server) that it kills
with SIGKILL and starts again on the same port and storage.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from tests.conftest import require_service
from tests.contract.tansu import TansuBroker, TansuUnavailable, free_port
from tests.contract.tls import TestCertificates, TlsProxy, write_certificates
from tests.contract.transport_contract import Collector, TransportContract, make_event
from tidings.event import Event
from tidings.topics import compile_pattern
from tidings.transport import SubscribeOptions, TransportError
from tidings.transports import open_transport
from tidings.transports.kafka import KafkaTransport, _Partition, topic_regex


def _unavailable(exc: Exception) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI requires Tansu: {exc}", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {exc}")


def _start(durable: bool) -> TansuBroker:
    try:
        broker = TansuBroker(durable=durable)
        broker.start()
    except TansuUnavailable as exc:
        _unavailable(exc)
        raise
    return broker


@pytest.fixture(scope="module")
def tansu() -> Iterator[TansuBroker]:
    broker = _start(durable=False)
    yield broker
    broker.stop()


def _prefix() -> str:
    return f"tc-{uuid.uuid4().hex[:10]}."


class _Restartable:
    def __init__(self, broker: TansuBroker, url: str) -> None:
        self.broker = broker
        self.url = url

    async def restart(self) -> None:
        await self.broker.restart()


async def _raw_producer(bootstrap: str) -> Any:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    return producer


class TestKafkaTransport(TransportContract):
    @pytest.fixture
    def transport_url(self, tansu: TansuBroker) -> str:
        require_service("tansu", tansu.host, tansu.port)
        # Tansu holds a new group's first join for half the session timeout: keep it short.
        return f"{tansu.url}?prefix={_prefix()}&session_timeout=2"

    @pytest.fixture
    async def publish_raw(
        self, tansu: TansuBroker, transport_url: str
    ) -> AsyncIterator[Callable[[bytes, str], Awaitable[None]]]:
        producer = await _raw_producer(tansu.bootstrap)
        transport = KafkaTransport(transport_url)

        async def publish(body: bytes, type_hint: str) -> None:
            headers = [("tidings-type", type_hint.encode())]
            await producer.send_and_wait(
                transport.topic_for(type_hint), body, key=b"raw", headers=headers
            )

        yield publish
        await producer.stop()

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"kafka://127.0.0.1:{free_port()}"

    @pytest.fixture
    def restart_server(self) -> Iterator[_Restartable]:
        broker = _start(durable=True)
        # S3 (moto) makes this broker slow, above all fetches after the restart (Tansu lists a
        # partition's objects per fetch): fetch_min_bytes lets one fetch carry many records; a
        # longer session rides out slow heartbeats; fewer commits mean fewer S3 writes.
        url = (
            f"{broker.url}?prefix={_prefix()}&session_timeout=6&commit_interval=0.5"
            "&fetch_min_bytes=65536&fetch_max_wait=0.2"
        )
        yield _Restartable(broker, url)
        broker.stop()


class TestKafkaTransportTopicPerType(TestKafkaTransport):
    """The same contract with one topic per event type (``<prefix><type>``, seed 004's layout).

    The restart test runs once, in the class above (the broker, not the layout, is under test).
    """

    @pytest.fixture
    def transport_url(self, tansu: TansuBroker) -> str:
        require_service("tansu", tansu.host, tansu.port)
        # Short metadata age: regex subscriptions see new per-type topics within 0.5 s.
        return (
            f"{tansu.url}?prefix={_prefix()}&topic_per_type=true"
            "&session_timeout=2&metadata_max_age=0.5"
        )

    @pytest.fixture
    def restart_server(self) -> None:
        return None


# ---- Kafka-specific behaviour ------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("a.b", ["a.b"], ["a.bc", "a.b.c", "xa.b"]),
        ("a.*", ["a.b", "a.c"], ["a", "a.b.c"]),
        ("a.**", ["a", "a.b", "a.b.c"], ["ab", "b.a"]),
        ("a.**.z", ["a.z", "a.b.z", "a.b.c.z"], ["a.zz", "a.b", "az"]),
        ("**.z", ["z", "a.z", "a.b.z"], ["az", "a.z.b"]),
        ("**", ["a", "a.b"], ["dlq.x", "dlq.x.y"]),
        ("*.**.*", ["a.b", "a.b.c"], ["a"]),
    ],
)
def test_topic_regex_is_the_glob(pattern: str, yes: list[str], no: list[str]) -> None:
    regex = re.compile(topic_regex("p.", compile_pattern(pattern), exclude="dlq."))
    for name in yes:
        assert regex.match("p." + name), f"{pattern} should match {name}"
    for name in no:
        assert not regex.match("p." + name), f"{pattern} should not match {name}"
    assert not regex.match("q." + yes[0]), "another prefix must not match"


def test_commits_stop_at_the_first_unacked_offset() -> None:
    """The Dispatcher finishes keys out of order; the commit must never pass an unfinished one."""
    part = _Partition(committed=10)
    assert part.watermark() is None  # nothing taken: nothing to commit
    for offset in range(10, 15):
        part.take(offset)
    part.ack(11)
    part.ack(12)
    assert part.watermark() == 10
    part.ack(10)
    assert part.watermark() == 13
    part.ack(14)
    assert part.watermark() == 13
    part.ack(13)
    assert part.watermark() == 15
    assert not part.pending and not part.done


def test_url_errors_are_clear() -> None:
    with pytest.raises(TransportError, match="not host:port"):
        open_transport("kafka://localhost:notaport")
    with pytest.raises(TransportError, match="unknown option"):
        open_transport("kafka://localhost:9092?partitons=3")
    with pytest.raises(TransportError, match="Kafka refuses"):
        open_transport("kafka://localhost:9092?prefix=bad prefix/")
    t = open_transport("kafka://user:secret@localhost:9092?prefix=a.")
    assert "secret" not in t.url and "user" not in t.url


async def test_topic_per_type_uses_the_prefix_like_seed_004(tansu: TansuBroker) -> None:
    """``prefix=wedi.events.&topic_per_type=true``: one topic per event type, patterns work."""
    require_service("tansu", tansu.host, tansu.port)
    prefix = f"{_prefix()}wedi.events."
    transport = open_transport(f"{tansu.url}?prefix={prefix}&topic_per_type=true")
    await transport.start()
    try:
        links, everything = Collector(), Collector()
        await transport.subscribe("payment_link.*", links)
        await transport.subscribe("**", everything)
        events = [
            make_event("payment_link.updated", key="p1"),
            make_event("payment_link.archived", key="p1"),
            make_event("user.created", key="u1"),
        ]
        await transport.publish_many(events)

        async def seen() -> bool:
            return links.count() >= 2 and everything.count() >= 3

        for _ in range(250):  # new topics reach a regex subscription on a metadata refresh
            if await seen():
                break
            await asyncio.sleep(0.04)
        assert sorted(e.type for e in links.events) == [
            "payment_link.archived",
            "payment_link.updated",
        ]
        assert sorted(e.id for e in everything.events) == sorted(e.id for e in events)
        admin_topics = await transport._producer.client.fetch_all_metadata()  # type: ignore[attr-defined]
        mine = sorted(t for t in admin_topics.topics() if t.startswith(prefix))
        assert mine == [
            f"{prefix}payment_link.archived",
            f"{prefix}payment_link.updated",
            f"{prefix}user.created",
        ]
    finally:
        await transport.close()


async def test_concurrent_single_publishes_share_a_batch_and_all_arrive(
    tansu: TansuBroker,
) -> None:
    """Many ``publish()`` calls at once on one partition (one key) all succeed and arrive.

    Each single publish joins the producer's open batch; sending a batch per call queued
    them behind each other until they timed out.
    """
    require_service("tansu", tansu.host, tansu.port)
    transport = open_transport(f"{tansu.url}?prefix={_prefix()}&session_timeout=2")
    await transport.start()
    try:
        got = Collector()
        await transport.subscribe("burst.x", got, SubscribeOptions(group="burst"))
        events = [make_event("burst.x", key="one-key") for _ in range(300)]
        await asyncio.gather(*(transport.publish(e) for e in events))
        await TransportContract.wait_for(lambda: got.count() >= 300, 20, "300 events")
        assert sorted(got.ids) == sorted(e.id for e in events)
    finally:
        await transport.close()


class _WithholdOffset:
    """Wraps a consumer's ``getmany`` to leave one offset out of the fetched records.

    ``times`` fetches lose it (a broker serving a later batch before a concurrent earlier one
    is readable, as Tansu did under concurrent producers); ``times=None`` loses it for good
    (a real gap: compaction or another producer's transaction markers).
    """

    def __init__(self, consumer: Any, offset: int, times: int | None) -> None:
        self.offset = offset
        self.left = times
        self.withheld = 0
        self._getmany = consumer.getmany
        consumer.getmany = self.getmany

    async def getmany(self, *args: Any, **kwargs: Any) -> dict[Any, list[Any]]:
        batches: dict[Any, list[Any]] = await self._getmany(*args, **kwargs)
        for tp, records in batches.items():
            if any(r.offset == self.offset for r in records) and self.left != 0:
                batches[tp] = [r for r in records if r.offset != self.offset]
                self.withheld += 1
                if self.left is not None:
                    self.left -= 1
        return batches


async def _one_partition_round(
    tansu: TansuBroker, gap_wait: float, times: int | None
) -> tuple[Collector, list[Event], _WithholdOffset, float]:
    transport = open_transport(f"{tansu.url}?prefix={_prefix()}&partitions=1&gap_wait={gap_wait}")
    await transport.start()
    try:
        got = Collector()
        sub: Any = await transport.subscribe("gap.x", got)
        hold = _WithholdOffset(sub._consumer, offset=3, times=times)
        events = [make_event("gap.x", key="k", n=i) for i in range(10)]
        started = time.monotonic()
        await transport.publish_many(events[:5])
        await transport.publish_many(events[5:])
        want = 10 if times is not None else 9
        await TransportContract.wait_for(lambda: got.count() >= want, 20, f"{want} events")
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.2)
        return got, events, hold, elapsed
    finally:
        await transport.close()


async def test_a_record_missing_from_a_fetch_is_fetched_again_not_skipped(
    tansu: TansuBroker,
) -> None:
    """Offsets 0-2 then 4-9 in one fetch: the subscription refetches from 3 instead of losing it."""
    require_service("tansu", tansu.host, tansu.port)
    got, events, hold, _ = await _one_partition_round(tansu, gap_wait=5.0, times=2)
    assert hold.withheld == 2
    assert got.ids == [e.id for e in events], "every event, once, in order"


async def test_a_real_gap_is_passed_over_after_gap_wait(tansu: TansuBroker) -> None:
    """An offset that never appears (compaction, transaction markers) stalls only ``gap_wait``."""
    require_service("tansu", tansu.host, tansu.port)
    got, events, hold, elapsed = await _one_partition_round(tansu, gap_wait=0.5, times=None)
    assert hold.withheld >= 2, "the missing offset was fetched again before giving up"
    assert got.ids == [e.id for i, e in enumerate(events) if i != 3]
    assert 0.5 <= elapsed < 10


async def test_health_reports_lag_of_a_slow_group(tansu: TansuBroker) -> None:
    require_service("tansu", tansu.host, tansu.port)
    transport = open_transport(f"{tansu.url}?prefix={_prefix()}&session_timeout=2")
    await transport.start()
    try:
        gate = asyncio.Event()

        async def stuck(_event: Any) -> None:
            await gate.wait()

        await transport.subscribe("lag.x", stuck, SubscribeOptions(group="slow", max_in_flight=1))
        await transport.publish_many([make_event("lag.x", key="k") for _ in range(30)])
        lag = 0
        for _ in range(100):
            lag = transport.health().lag or 0
            if lag >= 30:
                break
            await asyncio.sleep(0.05)
        assert lag == 30, f"30 unhandled events, health says lag {lag}"
        gate.set()
        for _ in range(200):
            if transport.health().lag == 0:
                break
            await asyncio.sleep(0.05)
        assert transport.health().lag == 0
    finally:
        await transport.close()


_CRASHY_MEMBER = """
import asyncio, sys
from tidings.transport import SubscribeOptions
from tidings.transports import open_transport

async def main():
    t = open_transport(sys.argv[1], session_timeout=2.0)
    await t.start()

    async def hang(event):
        print("taken", event.id, flush=True)
        await asyncio.Event().wait()

    await t.subscribe("crash.x", hang, SubscribeOptions(group="crashy"))
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.timeout(60)
async def test_a_killed_member_s_message_goes_to_the_group_after_the_session_timeout(
    tansu: TansuBroker,
) -> None:
    """kill -9 (no LeaveGroup, no commit): the group gets the message after the session ends."""
    require_service("tansu", tansu.host, tansu.port)
    url = f"{tansu.url}?prefix={_prefix()}"
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHY_MEMBER, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    transport = open_transport(url, session_timeout=2.0)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
        assert line.strip() == "ready", f"the crashy member did not start: {line!r}"
        await transport.start()
        sent = make_event("crash.x", key="k")
        await transport.publish(sent)
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 15)
        assert line.split() == ["taken", sent.id]
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        killed_at = time.monotonic()
        got: list[Event] = []
        await transport.subscribe("crash.x", got.append, SubscribeOptions(group="crashy"))
        for _ in range(400):
            if got:
                break
            await asyncio.sleep(0.05)
        took = time.monotonic() - killed_at
        assert [e.id for e in got] == [sent.id], "the killed member's message was not redelivered"
        assert took < 15, f"redelivery took {took:.1f}s with a 2 s session timeout"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        await transport.close()


class _SlowCommits:
    """Delays every OffsetCommit of a consumer by ``delay`` seconds.

    On a real cluster a commit waits for the offsets topic's replication, so tens of
    milliseconds are normal; Tansu answers at once, which hid a race in the assignment.
    """

    def __init__(self, consumer: Any, delay: float = 0.02) -> None:
        self.delay = delay
        self.calls = 0
        self._commit = consumer.commit
        consumer.commit = self.commit

    async def commit(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return await self._commit(*args, **kwargs)


@pytest.mark.parametrize("gap_wait", [0.0, 1.0])
async def test_a_newly_assigned_partition_loses_no_records_when_commits_are_slow(
    tansu: TansuBroker, gap_wait: float
) -> None:
    """A wildcard group subscription whose topic appears later gets every event of it.

    aiokafka fetches a newly assigned partition before (and while) the assignment callback
    runs; with slow commits a fetched batch used to arrive before the partition was
    registered and was dropped while the consumer's position moved past it: the group
    stalled (default ``gap_wait``) or lost the events for good (``gap_wait=0``).
    """
    require_service("tansu", tansu.host, tansu.port)
    transport = open_transport(
        f"{tansu.url}?prefix={_prefix()}&topic_per_type=true&session_timeout=2"
        f"&metadata_max_age=0.3&gap_wait={gap_wait}"
    )
    await transport.start()
    try:
        got = Collector()
        sub: Any = await transport.subscribe("slow.*", got, SubscribeOptions(group="slow"))
        slow = _SlowCommits(sub._consumer)  # before the topic exists, so before any assignment
        events = [make_event("slow.job", key=f"k{i % 7}", n=i) for i in range(200)]
        await transport.publish_many(events)
        try:
            await TransportContract.wait_for(lambda: got.count() >= 200, 20, "200 events")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; got {got.count()}") from None
        await asyncio.sleep(0.2)
        assert slow.calls > 0, "the commits were not slowed: the test proves nothing"
        assert sorted(got.ids) == sorted(e.id for e in events), "every event, once"
    finally:
        await transport.close()


async def test_records_of_a_partition_not_yet_registered_are_fetched_again(
    tansu: TansuBroker,
) -> None:
    """A batch returned for an assigned partition before it is registered is not dropped.

    The partition is unregistered by hand and registered again right after the first batch
    of it came back from the consumer, as when aiokafka returns records before the
    assignment callback started. The consumer's position has moved past that batch: the
    subscription must seek back to it. With ``gap_wait=0`` nothing else would notice.
    """
    require_service("tansu", tansu.host, tansu.port)
    transport = open_transport(
        f"{tansu.url}?prefix={_prefix()}&partitions=1&session_timeout=2&gap_wait=0"
    )
    await transport.start()
    try:
        got = Collector()
        sub: Any = await transport.subscribe("early.x", got, SubscribeOptions(group="early"))
        consumer = sub._consumer
        ((tp, part),) = sub._parts.items()
        del sub._parts[tp]
        returned_early: list[int] = []
        calls = 0
        getmany = consumer.getmany

        async def getmany_then_register(*args: Any, **kwargs: Any) -> dict[Any, list[Any]]:
            nonlocal calls
            calls += 1
            batches: dict[Any, list[Any]] = await getmany(*args, **kwargs)
            if batches.get(tp) and tp not in sub._parts:
                returned_early.extend(r.offset for r in batches[tp])
                asyncio.get_running_loop().call_soon(sub._parts.__setitem__, tp, part)
            return batches

        consumer.getmany = getmany_then_register
        # The fetch already waiting in the unwrapped getmany must end before records exist.
        await TransportContract.wait_for(lambda: calls > 0, 10, "a fetch through the wrapper")
        events = [make_event("early.x", key="k", n=i) for i in range(20)]
        await transport.publish_many(events[:10])
        await TransportContract.wait_for(lambda: bool(returned_early), 10, "the early batch")
        await transport.publish_many(events[10:])
        try:
            await TransportContract.wait_for(lambda: got.count() >= 20, 10, "20 events")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; got {got.count()}, offsets returned early {returned_early}"
            ) from None
        assert got.ids == [e.id for e in events], "every event, once, in order"
    finally:
        await transport.close()


# ---- TLS and SASL ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return write_certificates(tmp_path_factory.mktemp("kafka-tls"))


def _kafka(url: str, **options: Any) -> KafkaTransport:
    transport = open_transport(url, **options)
    assert isinstance(transport, KafkaTransport)
    return transport


def test_security_protocol_follows_the_scheme_and_the_user(certs: TestCertificates) -> None:
    """kafka:// is plaintext, kafkas:// TLS; a user in the URL adds SASL (PLAIN or SCRAM)."""
    plain = _kafka("kafka://localhost:9092")
    assert plain._client_kwargs()["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in plain._client_kwargs()

    tls = _kafka(f"kafkas://broker.example:9093?ssl_cafile={certs.ca}")
    kwargs = tls._client_kwargs()
    assert kwargs["security_protocol"] == tls.security_protocol == "SSL"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    trusted = [str(cert["subject"]) for cert in context.get_ca_certs()]
    assert trusted == [str(((("commonName", "tidings test CA"),),))], (
        "the CA bundle given is the one trusted"
    )

    system = _kafka("kafkas://broker.example:9093")  # no ssl_cafile: the system trust store
    assert system._client_kwargs()["ssl_context"].verify_mode == ssl.CERT_REQUIRED

    sasl = _kafka("kafka://app:pw@localhost:9092")
    assert {k: v for k, v in sasl._client_kwargs().items() if k.startswith(("sec", "sasl"))} == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "app",
        "sasl_plain_password": "pw",
    }
    for mechanism in ("SCRAM-SHA-256", "scram-sha-512"):
        scram = _kafka(f"kafkas://app:p%40ss%2Fw@h:9093?sasl_mechanism={mechanism}")
        kwargs = scram._client_kwargs()
        assert kwargs["security_protocol"] == "SASL_SSL"
        assert kwargs["sasl_mechanism"] == mechanism.upper()
        assert kwargs["sasl_plain_password"] == "p@ss/w", "percent-encoding is undone"

    explicit = _kafka(
        f"kafka://h:9093?security_protocol=ssl&ssl_cafile={certs.ca}"
        f"&ssl_certfile={certs.client_cert}&ssl_keyfile={certs.client_key}"
    )
    assert explicit.security_protocol == "SSL"

    mine = ssl.create_default_context()
    given = _kafka("kafkas://h:9093", ssl_context=mine)
    assert given._client_kwargs()["ssl_context"] is mine


def test_an_encrypted_client_key_needs_its_password(certs: TestCertificates) -> None:
    url = (
        f"kafkas://h:9093?ssl_cafile={certs.ca}&ssl_certfile={certs.client_cert}"
        f"&ssl_keyfile={certs.client_key_encrypted}"
    )
    _kafka(url, ssl_password=certs.key_password)
    with pytest.raises(TransportError, match="ssl_certfile/ssl_keyfile") as wrong:
        _kafka(url, ssl_password="not the passphrase")
    assert "not the passphrase" not in str(wrong.value)


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("kafka://h?security_protocol=TLS", {}, "security_protocol: expected one of"),
        ("kafkas://h?security_protocol=PLAINTEXT", {}, "kafkas:// means TLS"),
        ("kafkas://u:p@h?security_protocol=SASL_PLAINTEXT", {}, "kafkas:// means TLS"),
        ("kafka://h?security_protocol=SASL_SSL", {}, "needs a user and password"),
        ("kafkas://u:p@h?security_protocol=SSL", {}, "does not send them"),
        ("kafka://u:p@h?sasl_mechanism=GSSAPI", {}, "sasl_mechanism: expected one of"),
        ("kafka://h?sasl_mechanism=PLAIN", {}, "given without a user"),
        ("kafka://h?ssl_cafile=/etc/ca.pem", {}, "only used with TLS"),
        ("kafkas://h?ssl_cafile=/no/such/ca.pem", {}, "ssl_cafile.*no such file"),
        ("kafkas://h?ssl_cafile={client_key}", {}, "ssl_cafile.*not PEM"),
        ("kafkas://h?ssl_keyfile={client_key}", {}, "ssl_keyfile: given without ssl_certfile"),
        ("kafkas://h?ssl_certfile=/no/such/cert.pem", {}, "ssl_certfile.*no such file"),
        ("kafkas://h", {"ssl_context": "ctx"}, "ssl_context: expected an ssl.SSLContext"),
        ("kafkas://h?ssl_cafile={ca}", {"ssl_context": ssl.create_default_context()}, "both"),
        ("https://h", {}, "kafka:// or kafkas://"),
    ],
)
def test_tls_and_sasl_mistakes_are_named(
    certs: TestCertificates, url: str, options: dict[str, Any], message: str
) -> None:
    url = url.format(ca=certs.ca, client_key=certs.client_key)
    with pytest.raises(TransportError, match=message):
        KafkaTransport(url, **options)


def test_credentials_never_show_in_the_url() -> None:
    t = _kafka("kafkas://svc-user:s3cr%2Bt@h:9093?prefix=a.&ssl_password=keypass&topic=ev")
    for secret in ("svc-user", "s3cr", "keypass"):
        assert secret not in t.url, t.url
    assert t.url == "kafkas://***@h:9093?prefix=a.&ssl_password=***&topic=ev"
    assert "keypass" not in repr(t.health())


@pytest.fixture(scope="module")
def tls_tansu() -> Iterator[tuple[TansuBroker, int]]:
    """A Tansu broker that advertises a TLS proxy's port (the proxy runs in each test)."""
    proxy_port = free_port()
    try:
        broker = TansuBroker(advertised_port=proxy_port)
        broker.start()
    except TansuUnavailable as exc:
        _unavailable(exc)
        raise
    yield broker, proxy_port
    broker.stop()


def _tls_url(port: int, certs: TestCertificates, client_cert: bool = True) -> str:
    url = f"kafkas://127.0.0.1:{port}?prefix={_prefix()}&session_timeout=2&ssl_cafile={certs.ca}"
    if client_cert:
        url += f"&ssl_certfile={certs.client_cert}&ssl_keyfile={certs.client_key_encrypted}"
    return url


async def test_events_travel_over_mutual_tls(
    tls_tansu: tuple[TansuBroker, int], certs: TestCertificates
) -> None:
    """kafkas:// with a CA file and a client certificate: publish and a group consume work."""
    broker, proxy_port = tls_tansu
    require_service("tansu", broker.host, broker.port)
    async with TlsProxy(certs, proxy_port, broker.port, require_client_cert=True) as proxy:
        transport = _kafka(_tls_url(proxy_port, certs), ssl_password=certs.key_password)
        await transport.start()
        try:
            got = Collector()
            await transport.subscribe("tls.x", got, SubscribeOptions(group="tls"))
            events = [make_event("tls.x", key=f"k{i}", n=i) for i in range(20)]
            await transport.publish_many(events)
            await TransportContract.wait_for(lambda: got.count() >= 20, 20, "20 events")
            assert sorted(got.ids) == sorted(e.id for e in events)
            assert proxy.handshakes >= 2, "producer and consumer both connected through TLS"
        finally:
            await transport.close()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no CA file", "TLS|certificate|SSL"),
        ("no client certificate", "cannot connect"),
        ("plaintext to a TLS port", "cannot connect"),
    ],
)
async def test_a_failed_tls_connection_is_a_clear_error(
    tls_tansu: tuple[TansuBroker, int], certs: TestCertificates, case: str, message: str
) -> None:
    broker, proxy_port = tls_tansu
    require_service("tansu", broker.host, broker.port)
    url = {
        "no CA file": f"kafkas://127.0.0.1:{proxy_port}",
        "no client certificate": _tls_url(proxy_port, certs, client_cert=False),
        "plaintext to a TLS port": f"kafka://127.0.0.1:{proxy_port}",
    }[case]
    async with TlsProxy(certs, proxy_port, broker.port, require_client_cert=True):
        transport = _kafka(url, connect_timeout=3)
        started = time.monotonic()
        with pytest.raises(TransportError, match=message) as failed:
            await transport.start()
        assert time.monotonic() - started < 10
        assert f"127.0.0.1:{proxy_port}" in str(failed.value)
        await transport.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_refused_sasl_credentials_are_a_clear_error(mechanism: str) -> None:
    """A broker that refuses the user: TransportError naming SASL, never the password.

    Tansu 0.6 with ``--authentication`` refuses every SCRAM user ("e=unknown-user"), which
    aiokafka's SCRAM client turned into a bare ``KeyError: 'v'`` out of ``start()``.
    """
    try:
        broker = TansuBroker(authentication=True)
        broker.start()
    except TansuUnavailable as exc:
        _unavailable(exc)
        raise
    try:
        url = f"kafka://svc:hunter2-pw@{broker.bootstrap}?sasl_mechanism={mechanism}"
        transport = _kafka(url, connect_timeout=5)
        with pytest.raises(TransportError, match=f"SASL {mechanism} authentication failed"):
            await transport.start()
        message = transport.health().last_error or ""
        assert "authentication failed" in message and "hunter2" not in message
        await transport.close()
    finally:
        broker.stop()
