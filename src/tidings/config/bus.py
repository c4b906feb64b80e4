"""The ``bus`` and ``event_broker`` sections: the Bus's keyword arguments, seed 002's broker
settings, and the checks across their keys (``tidings.bus.from_config`` applies them)."""

from __future__ import annotations

from typing import Annotated, Literal, TypedDict

import msgspec

from tidings.config.durations import Duration
from tidings.config.errors import Invalid, Written, mask
from tidings.retry import RetryPolicy
from tidings.urls import redact_url

__all__ = [
    "BusKwargs",
    "BusSettings",
    "DatabaseBrokerSettings",
    "EventBrokerSettings",
    "NatsBrokerSettings",
    "RedisBrokerSettings",
    "RetrySettings",
    "check_broker",
    "check_bus",
    "redact_broker",
]

# Every section forbids unknown keys, so a typo is an error instead of a silent default.


class RetrySettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``bus.retry`` section; mirrors ``tidings.RetryPolicy`` and its defaults."""

    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 3
    initial_delay: Duration = Duration(1.0)
    max_delay: Duration = Duration(30.0)
    backoff_factor: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.max_retries,
            initial_delay=float(self.initial_delay),
            max_delay=float(self.max_delay),
            backoff_factor=float(self.backoff_factor),
            jitter=float(self.jitter),
        )


class BusSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``bus`` section: keyword arguments of ``tidings.Bus`` with the same defaults."""

    mode: Literal["inline", "sync", "async"] = "inline"
    workers: Annotated[int, msgspec.Meta(ge=1)] = 4
    buffer_size: Annotated[int, msgspec.Meta(ge=1)] = 1000
    when_full: Literal["block", "drop", "raise"] = "block"
    track_deliveries: bool = False
    dead_letter_size: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    close_timeout: Duration = Duration(5.0)
    retry: RetrySettings | None = None  # None: no bus-wide retries (Bus's default)


class RedisBrokerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``event_broker.redis``: where the Redis Streams provider connects and which stream it
    uses. ``url`` or ``host``/``port``/``username``/``password``/``db``, not both; how each key
    maps onto the Redis transport is in docs/config.md (``tidings.bus.from_config`` applies it)."""

    url: str | None = None
    host: str | None = None
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    username: str | None = None
    password: str | None = None
    db: Annotated[int, msgspec.Meta(ge=0)] | None = None
    stream_name: str | None = None  # "<prefix>:events"
    consumer_group: str | None = None


class NatsBrokerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``event_broker.nats``: the NATS JetStream provider (server, stream, subject prefix)."""

    url: str | None = None
    stream_name: str | None = None
    subject_prefix: str | None = None  # default: the stream name in lower case
    consumer_group: str | None = None


class DatabaseBrokerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``event_broker.database``: the PostgreSQL provider (tables woken by LISTEN/NOTIFY).

    ``url`` defaults to ``store.url`` when that is a PostgreSQL URL; ``table_name`` names the
    schema holding the queue's tables, ``channel`` the NOTIFY channel.
    """

    url: str | None = None
    table_name: str | None = None
    channel: str | None = None
    consumer_group: str | None = None


class EventBrokerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The seed-002 ``event_broker`` section, kept as written.

    Its bus-related keys are also copied onto ``bus`` and ``instance_id`` by ``load``
    (``worker_count`` -> ``bus.workers``, ``retry_policy`` -> ``bus.retry``, ...).
    ``Bus.from_config`` reads ``enabled``, ``provider`` and the chosen provider's section.
    """

    enabled: bool = True
    provider: Literal["memory", "redis", "nats", "database"] = "memory"
    mode: Literal["inline", "sync", "async"] | None = None
    worker_count: Annotated[int, msgspec.Meta(ge=1)] | None = None
    buffer_size: Annotated[int, msgspec.Meta(ge=1)] | None = None
    instance_id: str | None = None
    retry_policy: RetrySettings | None = None
    redis: RedisBrokerSettings | None = None
    nats: NatsBrokerSettings | None = None
    database: DatabaseBrokerSettings | None = None


class BusKwargs(TypedDict):
    """What ``Settings.bus_kwargs`` returns; typed so ``Bus(**kwargs)`` type-checks."""

    mode: Literal["inline", "sync", "async"]
    workers: int
    buffer_size: int
    when_full: Literal["block", "drop", "raise"]
    track_deliveries: bool
    dead_letter_size: int
    close_timeout: float
    retry: RetryPolicy | None


def redact_broker(broker: EventBrokerSettings | None) -> EventBrokerSettings | None:
    if broker is None:
        return None
    redis, nats, database = broker.redis, broker.nats, broker.database
    return msgspec.structs.replace(
        broker,
        redis=None
        if redis is None
        else msgspec.structs.replace(
            redis,
            url=None if redis.url is None else redact_url(redis.url),
            password=mask(redis.password),
        ),
        nats=nats
        if nats is None or nats.url is None
        else msgspec.structs.replace(nats, url=redact_url(nats.url)),
        database=database
        if database is None or database.url is None
        else msgspec.structs.replace(database, url=redact_url(database.url)),
    )


def check_bus(bus: BusSettings, written: Written) -> None:
    """What the schema cannot say about ``bus``: the retry policy as a whole."""
    retry = bus.retry
    if retry is None:
        return
    if retry.max_delay < retry.initial_delay:
        path = ("bus", "retry", "max_delay")
        raise Invalid(
            path,
            f"expected a duration >= initial_delay ({retry.initial_delay:g}s), "
            f"got {written(path, retry.max_delay)}",
        )
    try:
        retry.policy()
    except ValueError as exc:
        raise Invalid(("bus", "retry"), str(exc)) from None


def check_broker(broker: EventBrokerSettings | None) -> None:
    """A Redis server is written either as a URL or as its parts, not both."""
    redis = broker.redis if broker is not None else None
    if redis is None or redis.url is None:
        return
    parts = [k for k in ("host", "port", "username", "password", "db") if getattr(redis, k)]
    if parts:
        raise Invalid(
            ("event_broker", "redis", parts[0]),
            f"given together with url; write the server either as url "
            f"(redis://user:password@host:port/db) or as {', '.join(parts)}, not both",
        )
