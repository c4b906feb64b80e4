"""The helpers every transport shares (tidings.transports.common), and the on-broker names of
dead letters, which must never change (dead letters stored under an old name would be lost)."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from tidings.transport import TransportError, TransportState
from tidings.transports import open_transport
from tidings.transports.common import (
    Backoff,
    ConnectionReporter,
    Options,
    dead_letter_name,
    describe,
)

log = logging.getLogger("tidings.tests.common")


def _reporter(errors: list[BaseException] | None = None, **kw: object) -> ConnectionReporter:
    return ConnectionReporter(
        log,
        "test transport",
        "host:1",
        on_error=None if errors is None else errors.append,
        **kw,  # type: ignore[arg-type]
    )


def test_a_lost_connection_logs_once_per_change_and_keeps_the_last_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[BaseException] = []
    link = _reporter(errors, state=TransportState.CONNECTED)
    caplog.set_level(logging.INFO, logger=log.name)
    for i in range(5):
        link.report(ConnectionError(f"refused {i}"), "read", lost=True)
    assert link.state is TransportState.DISCONNECTED
    assert link.last_error == "read: ConnectionError: refused 4"
    assert len(errors) == 5, "every failure goes to on_error, not only the first"
    lost = [r for r in caplog.records if "lost host:1" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in caplog.records]
    assert link.connected() is True
    assert link.connected() is False, "already connected: not a recovery"
    assert link.state is TransportState.CONNECTED
    back = [r for r in caplog.records if "reconnected to host:1" in r.getMessage()]
    assert len(back) == 1, [r.getMessage() for r in caplog.records]


def test_other_failures_log_every_time_at_the_chosen_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = _reporter(state=TransportState.CONNECTED, render=str, error_level=logging.ERROR)
    caplog.set_level(logging.INFO, logger=log.name)
    link.report(ValueError("bad reply"), "ack")
    link.report(ValueError("bad reply"), "ack")
    assert link.state is TransportState.CONNECTED
    assert link.last_error == "ack: bad reply"
    lines = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in lines] == ["test transport host:1: ack: bad reply"] * 2


def test_closed_is_final() -> None:
    link = _reporter(state=TransportState.CLOSED)
    link.report(ConnectionError("gone"), "read", lost=True)
    link.lost("gone")
    assert link.connected() is False
    assert link.state is TransportState.CLOSED and link.closed
    assert link.last_error == "gone"


def test_a_raising_on_error_callback_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(exc: BaseException) -> None:
        raise RuntimeError("callback bug")

    link = ConnectionReporter(log, "test transport", "host:1", on_error=boom)
    link.notify(ValueError("x"))
    assert any("on_error callback raised" in r.getMessage() for r in caplog.records)


def test_describe_names_the_type_when_the_text_is_empty() -> None:
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(OSError("refused")) == "OSError: refused"


async def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.05, cap=0.3)
    assert [backoff.step() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    backoff.reset()
    assert backoff.next == 0.05
    fast = Backoff(0.0, cap=0.0)
    await asyncio.wait_for(fast.sleep(), 1.0)


OPT = Options("demo")


def test_options_read_typed_values_and_name_the_option_in_errors() -> None:
    assert OPT.boolean("b", "Yes") is True and OPT.boolean("b", "off") is False
    assert OPT.boolean("b", False) is False
    assert OPT.number("n", "2.5", 1) == 2.5 and OPT.number("n", -3) == -3.0
    assert OPT.duration("d", "0.5") == 0.5
    assert OPT.integer("i", "7") == 7 and OPT.integer("i", 3.0) == 3
    assert OPT.integer("i", 0, minimum=0) == 0
    assert OPT.choice("c", "b", ("a", "b")) == "b"
    cases = [
        (
            lambda: OPT.boolean("flag", "maybe"),
            "demo option flag: expected true or false, got 'maybe'",
        ),
        (lambda: OPT.number("n", "x", 1), "demo option n: expected a number, got 'x'"),
        (lambda: OPT.number("n", math.nan), "demo option n: expected a number, got nan"),
        (lambda: OPT.number("n", "0", 1), "demo option n: expected >= 1, got '0'"),
        (lambda: OPT.duration("d", "soon"), "demo option d: expected seconds, got 'soon'"),
        (lambda: OPT.duration("d", 0), "demo option d: expected seconds > 0, got 0"),
        (lambda: OPT.integer("i", "1.5"), "demo option i: expected a whole number >= 1, got '1.5'"),
        (lambda: OPT.integer("i", True), "demo option i: expected a whole number >= 1, got True"),
        (lambda: OPT.integer("i", 0), "demo option i: expected a whole number >= 1, got 0"),
        (lambda: OPT.choice("c", "z", ("a", "b")), "demo option c: expected a or b, got 'z'"),
        (
            lambda: OPT.choice("c", "z", ("a", "b", "c"), "letters"),
            "demo option c: expected one of a, b, c (letters), got 'z'",
        ),
    ]
    for call, message in cases:
        with pytest.raises(TransportError) as info:
            call()
        assert str(info.value) == message


def test_unknown_options_are_refused_with_the_known_ones() -> None:
    OPT.unknown(["a"], ["a", "b"])
    with pytest.raises(TransportError) as info:
        OPT.unknown(["zz", "a", "yy"], ["b", "a"])
    assert str(info.value) == "demo: unknown option(s) yy, zz; known: a, b"
    with pytest.raises(TransportError, match=r"^URL x: unknown parameter\(s\) q; known: a$"):
        OPT.unknown(["q"], ["a"], noun="parameter", where="URL x")


def test_dead_letter_names_on_the_brokers_stay_as_they_were() -> None:
    """These names are data on the broker: a change would strand stored dead letters."""
    assert dead_letter_name("p", "s") == "p.dlq.s"
    redis = open_transport("redis://localhost:6379/0?prefix=app")
    assert redis.dlq_key("g") == "app:dlq:g"  # type: ignore[attr-defined]
    kafka = open_transport("kafka://localhost:9092?prefix=app.")
    assert kafka.dlq_topic("g") == "app.dlq.g"  # type: ignore[attr-defined]
    assert open_transport("kafka://localhost:9092").dlq_topic("g") == "dlq.g"  # type: ignore[attr-defined]
    nats = open_transport("nats://localhost:4222?prefix=app")
    assert nats._dlq_subject("g") == "app_dlq.g"  # type: ignore[attr-defined]
    assert nats.dlq_prefix == "app_dlq"  # type: ignore[attr-defined]
    rabbit = open_transport("amqp://localhost/?prefix=app")
    assert rabbit._dlq_name("g") == "app.dlq.g"  # type: ignore[attr-defined]


def test_every_backend_names_its_bad_options() -> None:
    with pytest.raises(TransportError, match="redis option maxlen: expected a whole number"):
        open_transport("redis://localhost/0?maxlen=lots")
    with pytest.raises(TransportError, match="redis option mode: expected streams or pubsub"):
        open_transport("redis://localhost/0?mode=queue")
    with pytest.raises(TransportError, match="kafka option partitions: expected >= 1"):
        open_transport("kafka://localhost:9092?partitions=0")
    with pytest.raises(TransportError, match="NATS option storage: expected file or memory"):
        open_transport("nats://localhost:4222?storage=tape")
    with pytest.raises(TransportError, match="RabbitMQ option connect_timeout: expected seconds"):
        open_transport("amqp://localhost/?connect_timeout=soon")
    with pytest.raises(TransportError, match="PostgreSQL transport option pool_size"):
        open_transport("postgresql://localhost/db", pool_size="many")
    with pytest.raises(TransportError, match="memory transport option buffer_size"):
        open_transport("memory://x?buffer_size=-1")
