"""Publishers chosen by the environment: TIDINGS_PUBLISHER and seed 004's variables."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest

from tests.conftest import require_service
from tidings.context import event_context
from tidings.event import Event
from tidings.publishers import (
    LoggingPublisher,
    MemoryPublisher,
    PublisherError,
    TransportPublisher,
    open_publisher,
    publisher_spec,
)
from tidings.transport import TransportError


@pytest.mark.parametrize(
    ("env", "spec"),
    [
        ({}, "logging"),
        ({"TIDINGS_PUBLISHER": "memory"}, "memory"),
        ({"TIDINGS_PUBLISHER": "redis://127.0.0.1:6379/0"}, "redis://127.0.0.1:6379/0"),
        ({"EVENT_PUBLISHER_TYPE": "logging"}, "logging"),
        ({"EVENT_PUBLISHER_TYPE": "InMemory"}, "memory"),
        (
            {
                "EVENT_PUBLISHER_TYPE": "redpanda",
                "REDPANDA_BROKERS": "localhost:9092, other:9092",
                "REDPANDA_TOPIC_PREFIX": "wedi.events",
            },
            "kafka://localhost:9092,other:9092?topic_per_type=true&prefix=wedi.events.",
        ),
        (
            {"EVENT_PUBLISHER_TYPE": "redpanda", "REDPANDA_BROKERS": "localhost:9092"},
            "kafka://localhost:9092?topic_per_type=true",
        ),
        # TIDINGS_PUBLISHER wins over the seed's variables
        ({"TIDINGS_PUBLISHER": "memory", "EVENT_PUBLISHER_TYPE": "redpanda"}, "memory"),
    ],
)
def test_the_environment_names_the_publisher(env: dict[str, str], spec: str) -> None:
    assert publisher_spec(env) == spec


def test_seed_004_redpanda_settings_open_a_kafka_transport_with_the_topic_prefix() -> None:
    pub = open_publisher(
        env={
            "EVENT_PUBLISHER_TYPE": "redpanda",
            "REDPANDA_BROKERS": "localhost:9092",
            "REDPANDA_TOPIC_PREFIX": "wedi.events",
        }
    )
    assert isinstance(pub, TransportPublisher)
    transport = pub.transport
    assert transport.prefix == "wedi.events." and transport.topic_per_type  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EVENT_PUBLISHER_TYPE": "rabbit"}, "EVENT_PUBLISHER_TYPE='rabbit' is not a publisher"),
        ({"EVENT_PUBLISHER_TYPE": "redpanda"}, "needs REDPANDA_BROKERS"),
        ({"TIDINGS_PUBLISHER": "kafak://x:9092"}, "'kafak://x:9092' is not a publisher"),
        ({"TIDINGS_PUBLISHER": "stdout"}, "expected logging, memory or a transport URL"),
        ({"TIDINGS_PUBLISHER": "kafka://u:hunter2@x:9092?nope=1"}, "unknown option"),
    ],
)
def test_a_bad_setting_is_a_clear_error_when_the_publisher_is_opened(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(PublisherError, match=message.replace("?", r"\?")) as err:
        open_publisher(env=env)
    assert "hunter2" not in str(err.value)


def test_an_unreachable_broker_fails_at_start_not_at_the_first_event() -> None:
    pub = open_publisher("redis://127.0.0.1:1/0")

    async def main() -> None:
        with pytest.raises(TransportError):
            await pub.start()

    asyncio.run(main())


def test_logging_publisher_writes_one_json_line_per_event_with_request_metadata(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pub = open_publisher("logging")
    assert isinstance(pub, LoggingPublisher)

    async def main() -> None:
        with event_context(correlation_id="c-9", request_id="r-9"):
            await pub.publish_event(Event(type="pub.test.logged", data={"token": "x", "n": 1}))
            await pub.publish(Event(type="pub.test.logged", data={"n": 2}))

    with caplog.at_level(logging.INFO, logger="tidings.events"):
        asyncio.run(main())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tidings.events"]
    assert [line["data"]["n"] for line in lines] == [1, 2]
    assert lines[0]["data"]["token"] == "***"
    assert all(line["correlation_id"] == "c-9" for line in lines)


def test_memory_publisher_keeps_events_for_tests() -> None:
    pub = open_publisher(env={"EVENT_PUBLISHER_TYPE": "memory"})
    assert isinstance(pub, MemoryPublisher)
    asyncio.run(pub.publish(Event(type="pub.test.mem", data={})))
    assert [e.type for e in pub.get_events()] == ["pub.test.mem"]
    with pytest.raises(TypeError, match="tidings Event"):
        asyncio.run(pub.publish({"type": "x"}))  # type: ignore[arg-type]


def test_transport_publisher_publishes_through_redis() -> None:
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"pubtest-{uuid.uuid4().hex[:8]}"
    stream = f"{prefix}:events"
    pub = open_publisher(f"redis://127.0.0.1:6379/0?prefix={prefix}")

    async def main() -> int:
        await pub.start()
        try:
            await pub.publish_many([Event(type="pub.test.redis", data={"n": n}) for n in range(3)])
            client = pub.transport.client  # type: ignore[attr-defined]
            length = int(await client.xlen(stream))
            await client.delete(stream)
            return length
        finally:
            await pub.close()

    assert asyncio.run(main()) == 3
