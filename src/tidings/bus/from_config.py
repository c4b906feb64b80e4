"""Build the Bus that configuration describes (``Bus.from_config``); see docs/config.md.

Seed 002's ``event_broker`` section picks a provider, and the provider picks where events go:

- ``memory``: the in-process Bus (``mode``, ``workers``, ``buffer_size`` and the retry policy
  as ``bus_kwargs`` gives them);
- ``redis``: the Redis Streams transport; ``stream_name: "<prefix>:events"`` sets the key
  prefix (tidings keeps a namespace's events in ``<prefix>:events``);
- ``nats``: the NATS JetStream transport; ``stream_name`` is the stream, its subjects are
  ``<subject_prefix>.<type>`` (default prefix: the stream name in lower case);
- ``database``: the PostgreSQL transport (rows woken by LISTEN/NOTIFY); ``table_name`` names
  the schema of its tables, ``channel`` the NOTIFY channel, ``url`` defaults to ``store.url``.

Every provider's ``consumer_group`` is the Bus ``group``: processes with the same group share
the events. With a broker, ``mode: async`` and ``workers`` become each subscription's
``max_in_flight`` (the transport's consumers run the handlers, no worker threads); the broker
holds the queue, so ``buffer_size`` has no counterpart there and a log line says so.

``enabled: false`` gives a ``NoopBus`` (accepts events, delivers and keeps nothing) and logs
that once. ``instance_id`` is stamped on every published event whose ``source`` was left at the
default: ``Bus(source=...)`` is ``<source setting, else "tidings">/<instance_id>``.

This module builds on ``Bus`` (``tidings.bus.core``) and the transports, so ``Bus.from_config``
imports it only when called.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from tidings.bus.core import Bus
from tidings.bus.noop import NoopBus
from tidings.config import (
    CONFIG_ENV,
    BusKwargs,
    BusSettings,
    ConfigError,
    EventBrokerSettings,
    Settings,
    load,
)
from tidings.event import DEFAULT_SOURCE
from tidings.transport import SubscribeOptions, TransportError
from tidings.transports import open_transport
from tidings.urls import redact_url

__all__ = ["BusPlan", "build_bus", "plan_bus"]

log = logging.getLogger("tidings.bus")

_PG_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # what the PostgreSQL transport accepts
_PG_HELP = {
    "table_name": "names the schema that holds the queue's tables (messages, deliveries, ...)",
    "channel": "the LISTEN/NOTIFY channel",
}
_REDIS_STREAM_HELP = (
    "expected '<prefix>:events': tidings keeps a namespace's events in the stream "
    "'<prefix>:events' (and its dead letters in '<prefix>:dlq:<name>')"
)


@dataclass(frozen=True, slots=True)
class BusPlan:
    """What ``build_bus`` makes from settings, worked out without connecting to anything."""

    enabled: bool
    provider: str
    bus_kwargs: BusKwargs
    transport_url: str | None = field(default=None, repr=False)  # may hold a password
    transport_options: dict[str, Any] = field(default_factory=dict)
    group: str | None = None
    subscribe_options: SubscribeOptions | None = None
    source: str | None = None  # stamped on events that keep the default source
    notes: tuple[str, ...] = ()  # mappings worth one log line when the bus is built

    @property
    def redacted_url(self) -> str | None:
        """``transport_url`` safe to print."""
        return None if self.transport_url is None else redact_url(self.transport_url)


def plan_bus(settings: Settings, origin: str = "settings") -> BusPlan:
    """Map ``settings`` onto a Bus; ``origin`` (the file name) goes into every ConfigError."""
    broker = settings.event_broker or EventBrokerSettings()
    kwargs = settings.bus_kwargs()
    source = _source(settings)
    if not broker.enabled:
        return BusPlan(enabled=False, provider=broker.provider, bus_kwargs=kwargs)
    notes = [
        f"event_broker.{name} is set but provider is {broker.provider}: that section is not used"
        for name in ("redis", "nats", "database")
        if name != broker.provider and getattr(broker, name) is not None
    ]
    if broker.provider == "memory":
        return BusPlan(
            enabled=True, provider="memory", bus_kwargs=kwargs, source=source, notes=tuple(notes)
        )
    if broker.provider == "redis":
        url, options, group = _redis(broker, origin)
    elif broker.provider == "nats":
        url, options, group = _nats(broker, origin)
    else:
        url, options, group = _database(broker, settings, origin)
    subscribe_options = None
    if kwargs["mode"] == "async":
        # The transport's consumers run the handlers: workers bound how many at once.
        subscribe_options = SubscribeOptions(max_in_flight=kwargs["workers"])
        kwargs["mode"] = "inline"
    if broker.buffer_size is not None or settings.bus.buffer_size != BusSettings().buffer_size:
        notes.append(
            f"bus.buffer_size bounds the in-process queue of provider memory; with provider "
            f"{broker.provider} the broker holds the queue, so it is not used"
        )
    return BusPlan(
        enabled=True,
        provider=broker.provider,
        bus_kwargs=kwargs,
        transport_url=url,
        transport_options=options,
        group=group,
        subscribe_options=subscribe_options,
        source=source,
        notes=tuple(notes),
    )


def build_bus(
    config: str | os.PathLike[str] | Settings | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Bus:
    """The Bus that ``config`` describes: a YAML file, loaded ``Settings``, or None for
    ``$TIDINGS_CONFIG`` (``env`` defaults to ``os.environ``, as in ``tidings.config.load``).

    Raises ``ConfigError`` for a mistake in the settings and ``TransportError`` when the
    chosen broker cannot be reached.
    """
    if isinstance(config, Settings):
        settings, origin = config, "settings"
    else:
        environ: Mapping[str, str] = os.environ if env is None else env
        name = (os.fspath(config) if config is not None else "") or environ.get(CONFIG_ENV)
        path = Path(name) if name else None
        settings = load(path, environ)
        origin = str(path) if path is not None else "settings"
    plan = plan_bus(settings, origin)
    if not plan.enabled:
        log.warning(
            "event_broker.enabled is false in %s: this bus delivers and keeps nothing "
            "(published events are counted and dropped)",
            origin,
        )
        return NoopBus()
    for note in plan.notes:
        log.info("%s (%s)", note, origin)
    transport = None
    if plan.transport_url is not None:
        try:  # construction only checks options; start() (in the Bus) connects
            transport = open_transport(plan.transport_url, **plan.transport_options)
        except TransportError as exc:
            raise ConfigError(origin, f"event_broker.{plan.provider}", str(exc)) from None
    return Bus(
        source=plan.source,
        subscribe_options=plan.subscribe_options,
        transport=transport,
        group=plan.group,
        **plan.bus_kwargs,
    )


# --- one provider each -----------------------------------------------------------------------


def _source(settings: Settings) -> str | None:
    base = settings.source
    if settings.instance_id is None:
        return base
    instance = quote(settings.instance_id, safe="-._~:@!$&'()*+,;=")
    return f"{(base or DEFAULT_SOURCE).rstrip('/')}/{instance}"


def _scheme(url: str, allowed: tuple[str, ...], key: str, origin: str, example: str) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in allowed:
        raise ConfigError(
            origin,
            key,
            f"expected a {' or '.join(s + '://' for s in allowed)} URL such as {example}, "
            f"got {redact_url(url)!r}",
        )


def _redis(broker: EventBrokerSettings, origin: str) -> tuple[str, dict[str, Any], str | None]:
    section = broker.redis
    if section is None:
        return "redis://localhost:6379/0", {}, None
    if section.url is not None:
        url = section.url
        _scheme(url, ("redis", "rediss"), "event_broker.redis.url", origin, "redis://host:6379/0")
    else:
        userinfo = ""
        if section.username is not None or section.password is not None:
            userinfo = quote(section.username or "", safe="")
            if section.password is not None:
                userinfo += ":" + quote(section.password, safe="")
            userinfo += "@"
        host = section.host or "localhost"
        if ":" in host:
            host = f"[{host}]"  # an IPv6 address
        url = f"redis://{userinfo}{host}:{section.port or 6379}/{section.db or 0}"
    options: dict[str, Any] = {}
    if section.stream_name is not None:
        prefix, sep, tail = section.stream_name.rpartition(":")
        if not (sep and tail == "events" and prefix.strip()):
            raise ConfigError(
                origin,
                "event_broker.redis.stream_name",
                f"{_REDIS_STREAM_HELP}; got {section.stream_name!r} (e.g. 'resolvespec:events')",
            )
        options["prefix"] = prefix
    return url, options, section.consumer_group


def _nats(broker: EventBrokerSettings, origin: str) -> tuple[str, dict[str, Any], str | None]:
    section = broker.nats
    if section is None:
        return "nats://localhost:4222", {}, None
    url = section.url or "nats://localhost:4222"
    _scheme(url, ("nats", "tls"), "event_broker.nats.url", origin, "nats://localhost:4222")
    options: dict[str, Any] = {}
    if section.stream_name is not None:
        options["stream"] = section.stream_name
    if section.subject_prefix is not None:
        options["prefix"] = section.subject_prefix
    elif section.stream_name is not None and "prefix" not in dict(parse_qsl(urlsplit(url).query)):
        # Two streams may not share subjects, so a stream of its own gets subjects of its own.
        options["prefix"] = section.stream_name.lower()
    return url, options, section.consumer_group


def _database(
    broker: EventBrokerSettings, settings: Settings, origin: str
) -> tuple[str, dict[str, Any], str | None]:
    section = broker.database
    url = section.url if section is not None else None
    key = "event_broker.database.url"
    if url is None:
        if urlsplit(settings.store.url).scheme.lower() not in ("postgresql", "postgres"):
            raise ConfigError(
                origin,
                key,
                "required with provider database unless store.url is a postgresql:// URL "
                f"(it is {redact_url(settings.store.url)!r}); set url: "
                "postgresql://user@host:5432/db",
            )
        url = settings.store.url
    _scheme(url, ("postgresql", "postgres"), key, origin, "postgresql://user@host:5432/db")
    options: dict[str, Any] = {}
    if section is None:
        return url, options, None
    for name, option in (("table_name", "schema"), ("channel", "channel")):
        value = getattr(section, name)
        if value is None:
            continue
        if not _PG_NAME.fullmatch(value):
            raise ConfigError(
                origin,
                f"event_broker.database.{name}",
                f"{_PG_HELP[name]}: expected lower-case letters, digits and '_', starting with "
                f"a letter or '_' (at most 63), got {value!r}",
            )
        options[option] = value
    return url, options, section.consumer_group
