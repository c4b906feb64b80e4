"""Bus.from_config: seed 002's event_broker section builds a working bus (issue 9, item 15).

Every YAML block of seed 002's README builds a bus that delivers an event to a subscriber,
against the real loopback Redis, NATS and PostgreSQL. The blocks are used verbatim for the
mapping checks; for the round trips their stream, table and channel names get a unique suffix,
so runs never share broker state, and everything is removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from redis import Redis

from tests.conftest import require_service
from tests.test_config import SEED_002_BLOCKS, SEED_002_QUICK_START
from tidings import Bus, Event, RetryPolicy
from tidings.bus.from_config import plan_bus
from tidings.config import ConfigError, load
from tidings.testing import NoopBus
from tidings.transport import SubscribeOptions, TransportError
from tidings.transports import open_transport
from tidings.transports.nats import NatsTransport
from tidings.transports.redis import RedisTransport

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BLOCKS = dict(
    zip(
        ["quick-start", "memory", "redis", "nats", "database", "async", "sync", "retry"],
        [SEED_002_QUICK_START, *SEED_002_BLOCKS],
        strict=True,
    )
)
# Where the database block (which names no server) finds PostgreSQL: the store URL.
ENV = {"HOSTNAME": "api-7", "TIDINGS_STORE__URL": PG_ADMIN}


class UserCreated(Event, type="public.users.create"):
    login: str


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# --- the mapping, without servers --------------------------------------------------------------


def test_every_seed_002_block_maps_onto_a_bus(tmp_path: Path) -> None:
    plans = {name: plan_bus(load(write(tmp_path, text), env=ENV)) for name, text in BLOCKS.items()}
    summary = {
        name: (p.provider, p.bus_kwargs["mode"], p.redacted_url, p.transport_options, p.group)
        for name, p in plans.items()
    }
    assert summary == {
        "quick-start": ("memory", "async", None, {}, None),
        "memory": ("memory", "inline", None, {}, None),
        "redis": (
            "redis",
            "inline",
            "redis://localhost:6379/0",
            {"prefix": "resolvespec"},
            "resolvespec-workers",
        ),
        "nats": (
            "nats",
            "inline",
            "nats://localhost:4222",
            {"stream": "RESOLVESPEC_EVENTS", "prefix": "resolvespec_events"},
            None,
        ),
        "database": (
            "database",
            "inline",
            PG_ADMIN,
            {"schema": "events", "channel": "resolvespec_events"},
            None,
        ),
        "async": ("memory", "async", None, {}, None),
        "sync": ("memory", "sync", None, {}, None),  # Bus: sync is inline
        "retry": ("memory", "inline", None, {}, None),
    }
    quick = plans["quick-start"]
    assert (quick.bus_kwargs["workers"], quick.bus_kwargs["buffer_size"]) == (10, 1000)
    assert quick.source == "tidings/api-7"  # instance_id: "${HOSTNAME}"
    assert plans["memory"].source is None  # no instance_id: events keep their own source
    assert plans["retry"].bus_kwargs["retry"] == RetryPolicy(
        max_retries=3, initial_delay=1.0, max_delay=30.0, backoff_factor=2.0
    )
    # The transports take the mapped options as the seed meant them.
    redis = open_transport(plans["redis"].transport_url or "", **plans["redis"].transport_options)
    assert isinstance(redis, RedisTransport) and redis.stream == "resolvespec:events"
    nats_t = open_transport(plans["nats"].transport_url or "", **plans["nats"].transport_options)
    assert isinstance(nats_t, NatsTransport)
    assert (nats_t.stream, nats_t.prefix) == ("RESOLVESPEC_EVENTS", "resolvespec_events")


def test_async_mode_with_a_broker_becomes_max_in_flight(tmp_path: Path) -> None:
    text = BLOCKS["quick-start"].replace("provider: memory", "provider: redis")
    plan = plan_bus(load(write(tmp_path, text), env=ENV))
    assert plan.bus_kwargs["mode"] == "inline"  # the transport's consumers run handlers
    assert plan.subscribe_options is not None and plan.subscribe_options.max_in_flight == 10
    assert any("buffer_size" in note for note in plan.notes)


def test_source_joins_the_source_setting_and_instance_id(tmp_path: Path) -> None:
    text = "source: /billing/\ninstance_id: api 3\n"
    assert plan_bus(load(write(tmp_path, text), env={})).source == "/billing/api%203"
    assert plan_bus(load(write(tmp_path, "source: /billing\n"), env={})).source == "/billing"


# --- every block builds a working bus ----------------------------------------------------------


class Services:
    """Unique broker names for one test, and their removal afterwards."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:10]
        self.redis_prefix = f"resolvespec_{self.tag}"
        self.nats_stream = f"RESOLVESPEC_EVENTS_{self.tag.upper()}"
        self.pg_schema = f"events_{self.tag}"
        self.pg_channel = f"resolvespec_events_{self.tag}"

    def unique(self, block: str) -> str:
        return (
            block.replace('"resolvespec:events"', f'"{self.redis_prefix}:events"')
            .replace('"RESOLVESPEC_EVENTS"', f'"{self.nats_stream}"')
            .replace('table_name: "events"', f'table_name: "{self.pg_schema}"')
            .replace('"resolvespec_events"', f'"{self.pg_channel}"')
        )

    def require(self, block: str) -> None:
        for provider, name, port in (
            ("redis", "Redis", 6379),
            ("nats", "NATS", 4222),
            ("database", "PostgreSQL", 5432),
        ):
            if f"provider: {provider}" in block:
                require_service(name, "127.0.0.1", port)

    def clean(self) -> None:
        with contextlib.suppress(Exception):
            client = Redis.from_url("redis://127.0.0.1:6379/0")
            keys = list(client.scan_iter(match=f"{self.redis_prefix}:*", count=500))
            if keys:
                client.delete(*keys)
            client.close()
        with contextlib.suppress(Exception):
            asyncio.run(self._drop_streams())
        with (
            contextlib.suppress(Exception),
            psycopg.connect(PG_ADMIN, autocommit=True) as conn,
        ):
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.pg_schema}" CASCADE')

    async def _drop_streams(self) -> None:
        nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=2)
        try:
            js = nc.jetstream()
            for name in (self.nats_stream, f"{self.nats_stream}_DLQ"):
                with contextlib.suppress(Exception):
                    await js.delete_stream(name)
        finally:
            await nc.close()


@pytest.fixture
def services() -> Iterator[Services]:
    space = Services()
    yield space
    space.clean()


@pytest.mark.parametrize("name", list(BLOCKS))
def test_seed_002_block_builds_a_bus_that_delivers(
    name: str, tmp_path: Path, services: Services
) -> None:
    block = BLOCKS[name]
    services.require(block)
    env = dict(ENV)
    if "instance_id" not in block:
        env["TIDINGS_INSTANCE_ID"] = "api-7"
    bus = Bus.from_config(write(tmp_path, services.unique(block)), env=env)
    got: list[Event] = []
    try:
        assert type(bus) is Bus and bus.source == "tidings/api-7"
        bus.subscribe("*.*.create", got.append)  # seed 002's own pattern
        sent = UserCreated(login="ada", aggregate_id="123")
        bus.publish(sent)
        wait_until(lambda: len(got) == 1, f"the event through the {name} bus")
        received = got[0]
        assert isinstance(received, UserCreated) and received.login == "ada"
        assert received.id == sent.id
        assert received.source == "tidings/api-7"  # instance_id on every event's source
    finally:
        report = bus.close(timeout=5.0)
    assert report.drained, report.summary()
    assert len(got) == 1


def test_mode_async_with_a_broker_limits_in_flight_per_subscription(
    tmp_path: Path, services: Services
) -> None:
    block = BLOCKS["redis"] + "  mode: async\n  worker_count: 3\n"
    services.require(block)
    bus = Bus.from_config(write(tmp_path, services.unique(block)), env=ENV)
    try:
        sub = bus.subscribe("public.users.*", lambda e: None)
        options: SubscribeOptions = sub.remote.options  # type: ignore[union-attr]
        assert (options.max_in_flight, options.group) == (3, "resolvespec-workers")
    finally:
        bus.close(timeout=5.0)


def test_database_provider_notifies_on_the_configured_channel(
    tmp_path: Path, services: Services
) -> None:
    block = BLOCKS["database"]
    services.require(block)
    bus = Bus.from_config(write(tmp_path, services.unique(block)), env=ENV)
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as spy:
            spy.execute(f'LISTEN "{services.pg_channel}"')
            bus.subscribe("public.users.*", lambda e: None)
            bus.publish(UserCreated(login="bob"))
            heard = [n.channel for n in spy.notifies(timeout=5.0, stop_after=1)]
        assert heard == [services.pg_channel]
        with psycopg.connect(PG_ADMIN) as conn:
            rows = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                (services.pg_schema,),
            ).fetchone()
        assert rows is not None and rows[0] >= 4  # the queue's tables live in table_name
    finally:
        bus.close(timeout=5.0)


# --- enabled: false ----------------------------------------------------------------------------


def test_disabled_broker_gives_a_noop_bus_that_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis on a port nobody listens on: a disabled bus never connects.
    text = "event_broker:\n  enabled: false\n  provider: redis\n  redis: {port: 1}\n"
    path = write(tmp_path, text)
    with caplog.at_level(logging.INFO, logger="tidings"):
        bus = Bus.from_config(path, env={})
        called: list[Event] = []
        bus.subscribe("**", called.append)
        for i in range(3):
            bus.publish(UserCreated(login=str(i)))
        bus.close()
    assert isinstance(bus, NoopBus)
    assert called == [] and bus.publish_count == 3
    lines = [r.getMessage() for r in caplog.records if "enabled is false" in r.getMessage()]
    assert lines == [
        f"event_broker.enabled is false in {path}: this bus delivers and keeps nothing "
        "(published events are counted and dropped)"
    ]


# --- mistakes ----------------------------------------------------------------------------------


def build_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        Bus.from_config(write(tmp_path, text), env=env or {})
    return str(info.value)


def test_provider_keys_are_checked_by_name(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    assert build_error(
        tmp_path, "event_broker:\n  provider: redis\n  redis: {stream: x}\n"
    ).startswith(f"{path}: event_broker.redis.stream: unknown key (did you mean 'stream_name'?)")
    assert build_error(tmp_path, "event_broker:\n  redis: {url: 'redis://h:6379', host: h}\n") == (
        f"{path}: event_broker.redis.host: given together with url; write the server either as "
        "url (redis://user:password@host:port/db) or as host, not both"
    )
    assert build_error(
        tmp_path, "event_broker:\n  provider: redis\n  redis: {stream_name: events}\n"
    ) == (
        f"{path}: event_broker.redis.stream_name: expected '<prefix>:events': tidings keeps a "
        "namespace's events in the stream '<prefix>:events' (and its dead letters in "
        "'<prefix>:dlq:<name>'); got 'events' (e.g. 'resolvespec:events')"
    )
    assert build_error(
        tmp_path, "event_broker:\n  provider: nats\n  nats: {url: 'http://x:4222'}\n"
    ) == (
        f"{path}: event_broker.nats.url: expected a nats:// or tls:// URL such as "
        "nats://localhost:4222, got 'http://x:4222'"
    )
    assert build_error(
        tmp_path, "event_broker:\n  provider: nats\n  nats: {stream_name: 'A B'}\n"
    ).startswith(f"{path}: event_broker.nats: NATS stream name 'A B': use letters")


def test_database_provider_needs_a_postgresql_url(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    assert build_error(tmp_path, "event_broker:\n  provider: database\n") == (
        f"{path}: event_broker.database.url: required with provider database unless store.url "
        "is a postgresql:// URL (it is 'sqlite:///tidings.db'); set url: "
        "postgresql://user@host:5432/db"
    )
    text = "event_broker:\n  provider: database\n  database: {table_name: Public.Events}\n"
    assert build_error(tmp_path, text, ENV) == (
        f"{path}: event_broker.database.table_name: names the schema that holds the queue's "
        "tables (messages, deliveries, ...): expected lower-case letters, digits and '_', "
        "starting with a letter or '_' (at most 63), got 'Public.Events'"
    )


def test_provider_passwords_never_show(tmp_path: Path) -> None:
    text = (
        "event_broker:\n  provider: redis\n"
        "  redis: {host: localhost, password: hunter2, stream_name: 'a:events'}\n"
        "  nats: {url: 'nats://u:hunter3@localhost:4222'}\n"
    )
    settings = load(write(tmp_path, text), env={})
    shown = repr(settings.redacted()) + str(settings.to_builtins())
    shown += repr(plan_bus(settings))
    assert "hunter2" not in shown and "hunter3" not in shown
    assert plan_bus(settings).redacted_url == "redis://:***@localhost:6379/0"
    proc = subprocess.run(
        [sys.executable, "-m", "tidings", "config", "check", str(tmp_path / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "hunter" not in proc.stdout + proc.stderr
    assert re.search(r"event_broker\.redis\.password\s+\*\*\*", proc.stdout), proc.stdout
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "event_broker:\n  redis: {password: [hunter4]}\n"), env={})
    assert "hunter4" not in str(info.value)


def test_an_unreachable_broker_is_a_clear_transport_error(tmp_path: Path) -> None:
    text = "event_broker:\n  provider: nats\n  nats: {url: 'nats://127.0.0.1:1'}\n"
    with pytest.raises(TransportError, match=r"NATS server at 127\.0\.0\.1:1 is unreachable"):
        Bus.from_config(write(tmp_path, text), env={})


# --- the documented snippets run as written ----------------------------------------------------


def snippet(doc: str, heading: str) -> str:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    section = text.split(heading, 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, f"no python snippet under {heading!r} in docs/{doc}"
    return found.group(1)


@pytest.mark.parametrize(
    ("doc", "heading", "expected"),
    [
        ("config.md", "## A bus from configuration", "received from tidings/api-1\n"),
        ("bus.md", "## Built from configuration", "inline\n"),
    ],
)
def test_doc_snippet_runs_as_written(
    doc: str, heading: str, expected: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv("TIDINGS_CONFIG", raising=False)
    proc = subprocess.run(
        [sys.executable, "-c", snippet(doc, heading)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith(expected), proc.stdout
