"""Settings from a YAML file plus ``TIDINGS_*`` environment variables; see docs/config.md.

Ground floor: this module imports nothing of tidings but the ground-floor ``headers``,
``retry``, ``topics`` and ``urls``, so the bus, stores, webhooks, server and CLI can all read
settings without import cycles (``tidings.webhooks.endpoint.from_settings`` turns ``events``
into endpoints). Every user mistake becomes one ``ConfigError`` whose message names the file
(or environment variable), the key path and what was expected, so ``tidings config check`` can
print it without a traceback.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import ipaddress
import math
import os
import re
import socket
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi
import yaml

from tidings.headers import headers_problem
from tidings.retry import RetryPolicy
from tidings.topics import PatternError, compile_pattern
from tidings.urls import redact_url

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "LEASE_RULE",
    "AuthSettings",
    "BusKwargs",
    "BusSettings",
    "ConfigError",
    "DatabaseBrokerSettings",
    "Duration",
    "EndpointSettings",
    "EventBrokerSettings",
    "NatsBrokerSettings",
    "PayloadFormat",
    "RedisBrokerSettings",
    "RetrySettings",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "WebhookSettings",
    "endpoint_id_for_url",
    "fits_lease",
    "load",
    "parse_duration",
]

ENV_PREFIX = "TIDINGS_"
CONFIG_ENV = "TIDINGS_CONFIG"  # names the config file; never read as a setting

KeyPath = tuple[str, ...]


class ConfigError(ValueError):
    """Settings could not be loaded: ``source`` (file or variable), ``key`` path, ``problem``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(": ".join(part for part in (source, key, problem) if part))


# --- durations --------------------------------------------------------------------------

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ns|us|µs|ms|s|m|h|d)"
_DURATION = re.compile(rf"(?:{_NUMBER}\s*{_UNIT}\s*)+")
_DURATION_PART = re.compile(rf"({_NUMBER})\s*({_UNIT})")
_DURATION_HELP = "seconds as a number, or a string like 500ms, 30s, 5m, 1h or 1m30s"


class Duration(float):
    """Seconds. A type of its own only so that loading accepts ``"30s"`` where seconds go."""


def parse_duration(value: str | float) -> float:
    """Seconds from a number or a Go-style duration string, as seed configs write them.

    Accepts ``30``, ``1.5``, ``"30"``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` and sums
    such as ``"1m30s"`` (units ns, us, ms, s, m, h, d). Raises ``ValueError`` on anything
    else, on negative and on non-finite values.
    """
    seconds: float
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid duration {value!r}: expected {_DURATION_HELP}")
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not _DURATION.fullmatch(text):
                raise ValueError(f"invalid duration {value!r}: expected {_DURATION_HELP}") from None
            seconds = sum(
                float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text)
            )
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: expected a finite duration >= 0")
    return seconds


# --- the settings -----------------------------------------------------------------------
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
    maps onto the Redis transport is in docs/config.md (``tidings.bus_config`` applies it)."""

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


# --- webhooks, store, server (what ``tidings serve`` reads) ------------------------------

# tidings.webhooks.endpoint.PayloadFormat, repeated so that loading needs no webhooks import.
PayloadFormat = Literal["seed", "cloudevents", "cloudevents-binary"]
Compression = Literal["none", "gzip"]


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """An endpoint's ``auth``: exactly one of bearer, username + password, header + value."""

    bearer: str | None = None
    username: str | None = None
    password: str | None = None
    header: str | None = None
    value: str | None = None


class EndpointSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One endpoint written as a mapping; keys left out (None) take the ``events`` section's."""

    url: str
    secret: str | list[str] | None = None  # "whsec_<base64>"; a list while rotating
    events: list[str] | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    auth: AuthSettings | None = None
    timeout: Duration | None = None
    rate_limit: Annotated[float, msgspec.Meta(gt=0)] | None = None
    burst: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] | None = None
    enabled: bool = True
    format: PayloadFormat | None = None
    compress: Compression | None = None
    max_retries: Annotated[int, msgspec.Meta(ge=0)] | None = None
    retry_delay: Duration | None = None
    max_delay: Duration | None = None


class WebhookSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``events`` section: seed 000's webhook emitter settings, as written, plus extensions.

    ``endpoints`` maps an event type (or glob) to URLs or endpoint mappings, as seed 000 does;
    ``webhooks`` holds named endpoints with their own ``events`` patterns. The remaining keys are
    defaults for every endpoint and the delivery queue.
    """

    enabled: bool = False  # seed 000: nothing is sent until enabled
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 3
    retry_delay: Duration = Duration(5.0)
    queue_size: Annotated[int, msgspec.Meta(ge=1)] = 1000  # pending deliveries
    endpoints: dict[str, list[str | EndpointSettings]] = msgspec.field(default_factory=dict)
    webhooks: dict[str, EndpointSettings] = msgspec.field(default_factory=dict)
    format: PayloadFormat = "seed"
    compress: Compression = "none"  # gzip: bodies of 1 KiB and more go gzip-encoded
    max_delay: Duration = Duration(3600.0)
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2
    timeout: Duration = Duration(10.0)
    failure_window: Duration = Duration(86400.0)  # auto-disable an endpoint failing this long
    guard_config_endpoints: bool = False  # YAML endpoints are trusted to reach internal hosts
    allow_networks: list[str] = msgspec.field(default_factory=list)  # CIDRs the guard lets by
    # Where `tidings serve` takes the events it delivers: "http" (POST /events), "store" (the
    # store's live subscription: every writer) or a transport URL (redis://..., nats://...).
    source: str = "http"
    source_consumer: str = "tidings-webhooks"  # store checkpoint name / transport group
    source_ack_wait: Duration = Duration(30.0)  # transport: a dead consumer's messages move on

    def resolved_endpoints(self) -> list[tuple[str, EndpointSettings]]:
        """Every configured endpoint as ``(id, settings)``, section defaults filled in.

        A URL listed under several event types is one endpoint receiving all of them (``events``
        holds them all); named ``webhooks`` keep their name as id. Raises ``ConfigError`` if the
        section is invalid, which ``load`` has already ruled out.
        """
        try:
            return [(endpoint_id, spec) for _, endpoint_id, spec in _build_endpoints(self)]
        except _Invalid as exc:
            raise ConfigError("settings", _dotted(exc.path), exc.problem) from None


class StoreSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``store`` section: where events and deliveries are kept (``tidings.store`` URL)."""

    url: str = "sqlite:///tidings.db"  # a file in the working directory


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``server`` section of ``tidings serve``."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000  # 0: any free port
    api_key: str | None = None  # required unless host is a loopback address
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1024 * 1024
    max_batch: Annotated[int, msgspec.Meta(ge=1)] = 1000  # events per POST
    workers: Annotated[int, msgspec.Meta(ge=1)] = 50  # deliveries in flight at once
    lease: Duration = Duration(60.0)  # a claimed delivery's hold; longer than any timeout
    # Send webhook requests from a child process, so they use a second core; None: when the
    # machine has more than one.
    sender_process: bool | None = None

    def use_sender_process(self) -> bool:
        if self.sender_process is not None:
            return self.sender_process
        return (os.cpu_count() or 1) > 1


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


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Everything tidings reads from configuration; build it with ``load``."""

    bus: BusSettings = msgspec.field(default_factory=BusSettings)
    instance_id: str | None = None
    source: str | None = None
    event_broker: EventBrokerSettings | None = None
    events: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    # The application's publisher (tidings.publishers): logging, memory or a transport URL;
    # TIDINGS_PUBLISHER sets it.
    publisher: str | None = None

    def bus_kwargs(self) -> BusKwargs:
        """Keyword arguments for ``tidings.Bus(**settings.bus_kwargs())``."""
        bus = self.bus
        return {
            "mode": bus.mode,
            "workers": bus.workers,
            "buffer_size": bus.buffer_size,
            "when_full": bus.when_full,
            "track_deliveries": bus.track_deliveries,
            "dead_letter_size": bus.dead_letter_size,
            "close_timeout": float(bus.close_timeout),
            "retry": bus.retry.policy() if bus.retry is not None else None,
        }

    def redacted(self) -> Settings:
        """A copy safe to print or log: API key, secrets, auth values and header values become
        ``***``, and URL passwords and credential query parameters too."""
        events = self.events
        return msgspec.structs.replace(
            self,
            events=msgspec.structs.replace(
                events,
                endpoints={
                    key: [
                        redact_url(item) if isinstance(item, str) else _redact_endpoint(item)
                        for item in items
                    ]
                    for key, items in events.endpoints.items()
                },
                webhooks={name: _redact_endpoint(e) for name, e in events.webhooks.items()},
                source=redact_url(events.source),
            ),
            store=msgspec.structs.replace(self.store, url=redact_url(self.store.url)),
            event_broker=_redact_broker(self.event_broker),
            publisher=None if self.publisher is None else redact_url(self.publisher),
            server=msgspec.structs.replace(
                self.server, api_key=None if self.server.api_key is None else _MASK
            ),
        )

    def to_builtins(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars (durations as seconds) of ``redacted()``, e.g. for
        JSON output: secrets never leave this way."""
        data: dict[str, Any] = msgspec.to_builtins(self.redacted(), enc_hook=_enc_hook)
        return data


# --- endpoints: checks that need more than a type, and the resolved endpoints --------------

_MASK = "***"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_WEBHOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_SECRET_PREFIX = "whsec_"
_NEW_SECRET = (
    "python -c \"import base64, os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
)


def _mask(value: str | None) -> str | None:
    return None if value is None else _MASK


def _redact_broker(broker: EventBrokerSettings | None) -> EventBrokerSettings | None:
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
            password=_mask(redis.password),
        ),
        nats=nats
        if nats is None or nats.url is None
        else msgspec.structs.replace(nats, url=redact_url(nats.url)),
        database=database
        if database is None or database.url is None
        else msgspec.structs.replace(database, url=redact_url(database.url)),
    )


def _redact_endpoint(spec: EndpointSettings) -> EndpointSettings:
    secret, auth = spec.secret, spec.auth
    return msgspec.structs.replace(
        spec,
        url=redact_url(spec.url),
        secret=_mask(secret) if not isinstance(secret, list) else [_MASK] * len(secret),
        headers=dict.fromkeys(spec.headers, _MASK),
        auth=None
        if auth is None
        else msgspec.structs.replace(
            auth, bearer=_mask(auth.bearer), password=_mask(auth.password), value=_mask(auth.value)
        ),
    )


class _Invalid(Exception):
    """A rule beyond the schema is broken at ``path``; the loader adds the file name."""

    def __init__(self, path: tuple[Any, ...], problem: str) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem


def _check_url(url: str, path: tuple[Any, ...]) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _Invalid(
            path, f"expected an http:// or https:// URL with a host, got {redact_url(url)!r}"
        )


def _check_secret(secret: str, path: tuple[Any, ...]) -> None:
    """Never puts the secret in the message: errors end up in logs and terminals."""
    body = secret.removeprefix(_SECRET_PREFIX)
    try:
        valid = body != secret and bool(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise _Invalid(
            path,
            "expected a signing secret 'whsec_' followed by base64 (the value is not shown); "
            f"make one with: {_NEW_SECRET}",
        )


def _check_spec(spec: EndpointSettings, path: tuple[Any, ...]) -> None:
    """What the types cannot say about one endpoint mapping."""
    _check_url(spec.url, (*path, "url"))
    if isinstance(spec.secret, str):
        _check_secret(spec.secret, (*path, "secret"))
    elif spec.secret is not None:
        if not spec.secret:
            raise _Invalid(
                (*path, "secret"),
                "expected at least one secret; leave secret out to send unsigned requests",
            )
        for i, secret in enumerate(spec.secret):
            _check_secret(secret, (*path, "secret", i))
    if spec.events is not None:
        if not spec.events:
            raise _Invalid(
                (*path, "events"), "expected at least one pattern ('**' matches every event type)"
            )
        for i, pattern in enumerate(spec.events):
            try:
                compile_pattern(pattern)
            except PatternError as exc:
                raise _Invalid((*path, "events", i), str(exc)) from None
    problem = headers_problem(spec.headers, spec.auth)
    if problem is not None:
        raise _Invalid((*path, *problem[0]), problem[1])
    if spec.timeout is not None and spec.timeout <= 0:
        raise _Invalid((*path, "timeout"), f"expected a duration > 0, got {spec.timeout:g}s")
    if spec.rate_limit is not None and not math.isfinite(spec.rate_limit):
        raise _Invalid((*path, "rate_limit"), "expected a finite number of requests per second")


def endpoint_id_for_url(url: str) -> str:
    """A stable id for an endpoint known only by its URL (seed 000's lists): same URL, same id,
    so its deliveries survive restarts and config reloads."""
    return "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]


def _endpoint(
    url: str,
    events: tuple[str, ...],
    spec: EndpointSettings | None,
    section: WebhookSettings,
    path: tuple[Any, ...],
) -> EndpointSettings:
    """``spec`` with every key it leaves out taken from the section (and checked together)."""
    spec = spec if spec is not None else EndpointSettings(url=url)
    retry_delay = spec.retry_delay if spec.retry_delay is not None else section.retry_delay
    max_delay = spec.max_delay if spec.max_delay is not None else section.max_delay
    if max_delay < retry_delay:
        key = "max_delay" if spec.max_delay is not None else "retry_delay"
        raise _Invalid(
            (*path, key),
            f"expected max_delay ({max_delay:g}s) >= retry_delay ({retry_delay:g}s) for this "
            "endpoint (keys it leaves out come from the events section)",
        )
    return msgspec.structs.replace(
        spec,
        url=url,
        events=list(events),
        timeout=spec.timeout if spec.timeout is not None else section.timeout,
        format=spec.format or section.format,
        compress=spec.compress or section.compress,
        max_retries=spec.max_retries if spec.max_retries is not None else section.max_retries,
        retry_delay=retry_delay,
        max_delay=max_delay,
    )


def _build_endpoints(
    section: WebhookSettings,
) -> list[tuple[tuple[Any, ...], str, EndpointSettings]]:
    """Each endpoint as (key path it was written at, id, resolved settings).

    In the per-type form every mention of a URL is one endpoint: bare URLs add their event type
    and take the settings of the mapping(s) for that URL, which must agree.
    """
    first: dict[str, tuple[Any, ...]] = {}
    types: dict[str, list[str]] = {}
    specs: dict[str, tuple[tuple[Any, ...], EndpointSettings]] = {}
    for event_type, items in section.endpoints.items():
        type_path: tuple[Any, ...] = ("events", "endpoints", event_type)
        try:
            compile_pattern(event_type)
        except PatternError as exc:
            raise _Invalid(type_path, str(exc)) from None
        for i, item in enumerate(items):
            path = (*type_path, i)
            if isinstance(item, str):
                _check_url(item, path)
                url = item
            else:
                _check_spec(item, path)
                url = item.url
                if url in specs:
                    other_path, other = specs[url]
                    differ = [
                        k
                        for k in EndpointSettings.__struct_fields__
                        if k not in ("url", "events") and getattr(item, k) != getattr(other, k)
                    ]
                    if differ:
                        raise _Invalid(
                            path,
                            f"same URL as {_dotted(other_path)} with a different "
                            f"{', '.join(differ)}; one URL is one endpoint, so give every "
                            "mapping for it the same settings (or name it under events.webhooks)",
                        )
                else:
                    specs[url] = (path, item)
            first.setdefault(url, path)
            types.setdefault(url, []).append(event_type)
            if not isinstance(item, str) and item.events:
                types[url].extend(item.events)
    built: list[tuple[tuple[Any, ...], str, EndpointSettings]] = []
    for url, first_path in first.items():
        path, spec = specs.get(url, (first_path, None))
        events = tuple(dict.fromkeys(types[url]))
        built.append((path, endpoint_id_for_url(url), _endpoint(url, events, spec, section, path)))
    taken = {endpoint_id: path for path, endpoint_id, _ in built}
    for name, spec in section.webhooks.items():
        path = ("events", "webhooks", name)
        if not _WEBHOOK_NAME.fullmatch(name):
            raise _Invalid(
                path,
                "expected a name of letters, digits, '_', '.' and '-' (at most 64, starting "
                "with a letter or digit): it becomes the endpoint id in the API",
            )
        if name in taken:
            raise _Invalid(path, f"this name is the id of the endpoint at {_dotted(taken[name])}")
        _check_spec(spec, path)
        events = tuple(spec.events) if spec.events is not None else ("**",)
        built.append((path, name, _endpoint(spec.url, events, spec, section, path)))
    return built


# --- loading ----------------------------------------------------------------------------


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (default: ``$TIDINGS_CONFIG``, else no file), apply ``TIDINGS_*``
    overrides from ``env`` (default: ``os.environ``), validate, and return the settings.

    Raises ``ConfigError`` for every user mistake.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if path is None or path == "":
        path = environ.get(CONFIG_ENV) or None
    return _Loader(None if path is None else Path(path), environ).run()


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, float):  # Duration
        return float(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Duration:
        return Duration(parse_duration(obj))
    raise NotImplementedError(f"cannot decode {tp!r}")


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which PyYAML would silently overwrite."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            continue  # let the schema report it
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first given on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_StrictYamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)

# ${NAME}, ${NAME:-default}, $$ (a literal $), or a malformed ${...} (group 4).
_REFERENCE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|(\{[^}]*\}?))")

# seed 002 key -> tidings key; values are copied, the event_broker section stays as written.
_LEGACY: list[tuple[KeyPath, KeyPath]] = [
    (("event_broker", "mode"), ("bus", "mode")),
    (("event_broker", "worker_count"), ("bus", "workers")),
    (("event_broker", "buffer_size"), ("bus", "buffer_size")),
    (("event_broker", "instance_id"), ("instance_id",)),
    *(
        (("event_broker", "retry_policy", name), ("bus", "retry", name))
        for name in RetrySettings.__struct_fields__
    ),
]

_SETTINGS_TYPE = mi.type_info(Settings)
_MISSING = object()
# Errors never show the values under these keys.
_HIDDEN = frozenset({"api_key", "secret", "auth", "headers", "password"})


def _dotted(path: tuple[Any, ...]) -> str:
    """``events.endpoints['order.*'][0].url``: keys that are not plain names are quoted."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(str(part)):
            text += f"[{str(part)!r}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _show(value: Any, path: tuple[Any, ...] = ()) -> str:
    """``value`` for an error message; under a secret-bearing key only its kind."""
    if any(part in _HIDDEN for part in path) and value is not None:
        kinds = {bool: "true or false", int: "a number", float: "a number", str: "a string"}
        return kinds.get(type(value), _show(value)) + " (value not shown)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _describe(tp: mi.Type) -> str:
    if isinstance(tp, mi.UnionType):
        # Leave "null" out: an optional key is better left out than set to null.
        members = [_describe(t) for t in tp.types if not isinstance(t, mi.NoneType)]
        return " or ".join(members) or "null"
    if isinstance(tp, mi.IntType | mi.FloatType):
        noun = "an integer" if isinstance(tp, mi.IntType) else "a number"
        if tp.ge is not None and tp.le is not None:
            return f"{noun} from {tp.ge} to {tp.le}"
        bounds = [
            f"{op} {bound}"
            for op, bound in ((">=", tp.ge), (">", tp.gt), ("<=", tp.le), ("<", tp.lt))
            if bound is not None
        ]
        return " ".join([noun, *bounds])
    if isinstance(tp, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in tp.values)
    if isinstance(tp, mi.CustomType) and tp.cls is Duration:
        return f"a duration ({_DURATION_HELP})"
    simple: dict[type[mi.Type], str] = {
        mi.BoolType: "true or false",
        mi.StrType: "a string",
        mi.NoneType: "null",
        mi.StructType: "a mapping",
        mi.DictType: "a mapping",
        mi.ListType: "a list",
        mi.AnyType: "any value",
    }
    return simple.get(type(tp), str(tp))


def _container(tp: mi.Type) -> mi.Type:
    """The mapping/list member of an optional section, to walk into it."""
    if isinstance(tp, mi.UnionType):
        for member in tp.types:
            if isinstance(member, mi.StructType | mi.DictType | mi.ListType):
                return member
    return tp


def _type_at(path: tuple[Any, ...]) -> mi.Type | None:
    """The schema type of the value at ``path``, or None if the schema has no such key."""
    tp: mi.Type = _SETTINGS_TYPE
    for key in path:
        tp = _container(tp)
        if isinstance(tp, mi.StructType):
            field = next((f for f in tp.fields if f.encode_name == key), None)
            if field is None:
                return None
            tp = field.type
        elif isinstance(tp, mi.DictType):
            tp = tp.value_type
        elif isinstance(tp, mi.ListType):
            tp = tp.item_type
        elif isinstance(tp, mi.AnyType):
            return tp
        else:
            return None
    return tp


def _accepts_text(tp: mi.Type | None) -> bool:
    """True if a string is a valid value as it stands, so an env value must stay text."""
    if isinstance(tp, mi.UnionType):
        return any(_accepts_text(t) for t in tp.types)
    return isinstance(tp, mi.StrType) or (isinstance(tp, mi.CustomType) and tp.cls is Duration)


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        if isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
            continue
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[(.*?)\]")
_VALIDATION = re.compile(r"^(?P<message>.*?)(?: - at `(?:key` in `)?\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`")
_REQUIRED = re.compile(r"Object missing required field `(?P<name>[^`]*)`")
_ANY_KEY = "..."  # how msgspec writes a mapping key in an error path


def _replaced(data: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A copy of ``data`` with the value at ``path`` replaced; nothing else is copied."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        return {**data, head: _replaced(data[head], rest, new)}
    items = list(data)
    items[head] = _replaced(items[head], rest, new)
    return items


def _parse_path(text: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for name, index, other in _PATH_TOKEN.findall(text):
        parts.append(name or (int(index) if index else other))
    return tuple(parts)


class _Loader:
    """One load: the raw data plus where each value came from, for error messages."""

    def __init__(self, path: Path | None, env: Mapping[str, str]) -> None:
        self.path = path
        self.name = str(path) if path is not None else ""
        self.env = env
        self.raw: dict[str, Any] = {}
        self.origins: dict[tuple[Any, ...], str] = {}  # key path -> environment variable
        self.moved: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # bus path -> seed-002 path

    def run(self) -> Settings:
        if self.path is not None:
            self.raw = self._interpolate(self._read(self.path), ())
        self._apply_env()
        self._apply_legacy()
        try:
            settings = msgspec.convert(self.raw, Settings, strict=False, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            raise self._from_validation(exc) from None
        self._check(settings)
        return settings

    # reading and interpolation

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(self.name, "", "config file not found") from None
        except IsADirectoryError:
            raise ConfigError(self.name, "", "is a directory, expected a YAML file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(self.name, "", f"not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise ConfigError(self.name, "", f"cannot read: {exc.strerror}") from None
        try:
            data = yaml.load(text, Loader=_StrictYamlLoader)  # a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{self.name}:{mark.line + 1}:{mark.column + 1}" if mark else self.name
            problem = exc.problem or exc.context or "syntax error"
            raise ConfigError(where, "", f"invalid YAML: {problem}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(self.name, "", f"invalid YAML: {exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(
                self.name, "", f"expected a mapping of settings at the top, got {_show(data)}"
            )
        return data

    def _interpolate(self, value: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(value, dict):
            return {k: self._interpolate(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._interpolate(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return _REFERENCE.sub(lambda m: self._resolve(m, path), value)
        return value

    def _resolve(self, match: re.Match[str], path: tuple[Any, ...]) -> str:
        if match.group(1):
            return "$"
        if match.group(4) is not None:
            raise ConfigError(
                self.name,
                _dotted(path),
                f"bad variable reference {match.group(0)!r}: expected ${{NAME}} or "
                "${NAME:-default} (write $$ for a literal $)",
            )
        name, default = match.group(2), match.group(3)
        value = self.env.get(name)
        if value is None and default is None and name == "HOSTNAME":
            value = socket.gethostname()  # shells set HOSTNAME without exporting it
        if default is not None and not value:
            return default
        if value is None:
            raise ConfigError(
                self.name,
                _dotted(path),
                f"environment variable {name} is not set (set it, or give a default: "
                f"${{{name}:-default}})",
            )
        return value

    # environment overrides

    def _apply_env(self) -> None:
        for var in sorted(self.env):
            if not var.upper().startswith(ENV_PREFIX) or var.upper() == CONFIG_ENV:
                continue
            path = tuple(part.lower() for part in var[len(ENV_PREFIX) :].split("__"))
            if not all(path):
                raise ConfigError(
                    f"environment variable {var}",
                    "",
                    "empty key: separate levels with a double underscore, as in "
                    "TIDINGS_BUS__RETRY__MAX_RETRIES",
                )
            self._set(path, self._env_value(path, self.env[var]), var)

    @staticmethod
    def _env_value(path: KeyPath, text: str) -> Any:
        if _accepts_text(_type_at(path)):
            return text  # TIDINGS_INSTANCE_ID=123 stays the string "123"
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return value if value is None or isinstance(value, str | int | float | bool) else text

    def _set(self, path: tuple[Any, ...], value: Any, var: str) -> None:
        node = self.raw
        for i, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"environment variable {var}",
                    _dotted(path),
                    f"cannot set it: {_dotted(path[: i + 1])} is {_show(child)} in "
                    f"{self.name or 'the settings'}, not a mapping",
                )
            node = child
        node[path[-1]] = value
        self.origins[path] = var

    # seed 002

    def _apply_legacy(self) -> None:
        if not isinstance(self.raw.get("event_broker"), dict):
            return
        for old, new in _LEGACY:
            value = _get(self.raw, old)
            if value is _MISSING or value is None:
                continue
            if _get(self.raw, new) is not _MISSING:
                old_env, new_env = old in self.origins, new in self.origins
                if new_env and not old_env:
                    continue  # an environment variable beats the file
                if old_env == new_env:
                    raise ConfigError(
                        self._source(old),
                        _dotted(old),
                        f"sets the same thing as {_dotted(new)}; keep only {_dotted(new)}",
                    )
            node = self.raw
            for i, key in enumerate(new[:-1]):
                if node.get(key) is None:
                    node[key] = {}
                    self.moved[new[: i + 1]] = old[: i + 1]
                node = node[key]
                if not isinstance(node, dict):
                    break  # the schema reports the non-mapping
            else:
                node[new[-1]] = value
                self.moved[new] = old
                if old in self.origins:
                    self.origins[new] = self.origins[old]

    # errors

    def _source(self, path: tuple[Any, ...]) -> str:
        var = self.origins.get(path)
        if var is not None:
            return f"environment variable {var}"
        return self.name or "settings"

    def _error(self, path: tuple[Any, ...], problem: str) -> ConfigError:
        shown = self.moved.get(path, path)
        return ConfigError(self._source(path), _dotted(shown), problem)

    def _locate(self, path: tuple[Any, ...], exc: msgspec.ValidationError) -> tuple[Any, ...]:
        """msgspec writes a mapping key as ``[...]``; find which key by converting the mapping
        one entry at a time, until the same error comes back."""
        while _ANY_KEY in path:
            i = path.index(_ANY_KEY)
            mapping = _get(self.raw, path[:i])
            if not isinstance(mapping, dict):
                break
            for key, value in mapping.items():
                try:
                    trial = _replaced(self.raw, path[:i], {key: value})
                    msgspec.convert(trial, Settings, strict=False, dec_hook=_dec_hook)
                except msgspec.ValidationError as again:
                    if str(again) == str(exc):
                        path = (*path[:i], key, *path[i + 1 :])
                        break
            else:
                break
        return path

    def _from_validation(self, exc: msgspec.ValidationError) -> ConfigError:
        found = _VALIDATION.match(str(exc))
        message = found.group("message") if found else str(exc)
        path = self._locate(_parse_path(found.group("path") or ""), exc) if found else ()
        required = _REQUIRED.fullmatch(message)
        if required:
            key = (*path, required.group("name"))
            return self._error(
                key, f"required but missing: expected {_describe(_type_at(key) or mi.AnyType())}"
            )
        unknown = _UNKNOWN.fullmatch(message)
        if unknown:
            name = unknown.group("name")
            section = _container(_type_at(path) or _SETTINGS_TYPE)
            known = (
                [f.encode_name for f in section.fields]
                if isinstance(section, mi.StructType)
                else []
            )
            close = difflib.get_close_matches(name.lower(), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return self._error(
                (*path, name), f"unknown key{hint}; expected one of: {', '.join(known)}"
            )
        if "at `key` in" in str(exc):
            return self._error(path, "keys must be strings")
        tp, value = _type_at(path), _get(self.raw, path)
        if tp is None or value is _MISSING:
            return self._error(path, message[:1].lower() + message[1:])
        return self._error(path, f"expected {_describe(tp)}, got {_show(value, path)}")

    def _check(self, settings: Settings) -> None:
        """Rules across keys, which the per-key schema cannot express."""
        self._check_bus(settings.bus)
        self._check_broker(settings.event_broker)
        endpoints = self._check_events(settings.events)
        self._check_server(settings, endpoints)
        scheme, sep, _ = settings.store.url.partition("://")
        if not (sep and scheme):
            raise self._error(
                ("store", "url"),
                "expected a store URL such as sqlite:///tidings.db, memory:// or "
                f"postgresql://user@host:5432/db, got {redact_url(settings.store.url)!r}",
            )

    def _written(self, path: tuple[Any, ...], seconds: float) -> str:
        raw = _get(self.raw, path)
        return _show(raw) if raw is not _MISSING else f"the default {seconds:g}s"

    def _check_bus(self, bus: BusSettings) -> None:
        retry = bus.retry
        if retry is None:
            return
        if retry.max_delay < retry.initial_delay:
            path = ("bus", "retry", "max_delay")
            raise self._error(
                path,
                f"expected a duration >= initial_delay ({retry.initial_delay:g}s), "
                f"got {self._written(path, retry.max_delay)}",
            )
        try:
            retry.policy()
        except ValueError as exc:
            raise self._error(("bus", "retry"), str(exc)) from None

    def _check_broker(self, broker: EventBrokerSettings | None) -> None:
        redis = broker.redis if broker is not None else None
        if redis is None or redis.url is None:
            return
        parts = [k for k in ("host", "port", "username", "password", "db") if getattr(redis, k)]
        if parts:
            raise self._error(
                ("event_broker", "redis", parts[0]),
                f"given together with url; write the server either as url "
                f"(redis://user:password@host:port/db) or as {', '.join(parts)}, not both",
            )

    def _check_events(
        self, events: WebhookSettings
    ) -> list[tuple[tuple[Any, ...], str, EndpointSettings]]:
        if events.max_delay < events.retry_delay:
            path = ("events", "max_delay")
            raise self._error(
                path,
                f"expected a duration >= retry_delay ({events.retry_delay:g}s), "
                f"got {self._written(path, events.max_delay)}",
            )
        self._check_source(events)
        for name in ("timeout", "failure_window", "source_ack_wait"):
            if getattr(events, name) <= 0:
                path = ("events", name)
                raise self._error(path, f"expected a duration > 0, got {self._written(path, 0)}")
        for i, network in enumerate(events.allow_networks):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise self._error(
                    ("events", "allow_networks", i),
                    "expected a network in CIDR notation such as 10.0.0.0/8, 192.168.1.7/32 or "
                    f"fd00::/8, got {network!r}",
                ) from None
        try:
            return _build_endpoints(events)
        except _Invalid as exc:
            raise self._error(exc.path, exc.problem) from None

    def _check_source(self, events: WebhookSettings) -> None:
        source = events.source
        scheme, sep, rest = source.partition("://")
        if source not in ("http", "store") and not (sep and _SCHEME.fullmatch(scheme) and rest):
            raise self._error(
                ("events", "source"),
                "expected http (events come in through POST /events), store (follow the event "
                "store: every writer) or a transport URL such as redis://localhost:6379/0, "
                f"got {_show(redact_url(source))}",
            )
        if sep and scheme.lower() in ("sqlite", "memory"):
            raise self._error(
                ("events", "source"),
                f"got {_show(redact_url(source))}, which is not a transport other processes "
                "publish to; to deliver what any writer appends to the event store (store.url) "
                "write `source: store`; a URL here names a transport (redis://, nats://, "
                "kafka://, amqp://, postgresql:// for LISTEN/NOTIFY)",
            )
        if not _WEBHOOK_NAME.fullmatch(events.source_consumer):
            raise self._error(
                ("events", "source_consumer"),
                "expected a name of letters, digits, '.', '_' or '-' (up to 64), got "
                f"{_show(events.source_consumer)}",
            )

    def _check_server(
        self, settings: Settings, endpoints: list[tuple[tuple[Any, ...], str, EndpointSettings]]
    ) -> None:
        server = settings.server
        if server.api_key == "":
            raise self._error(
                ("server", "api_key"),
                "expected a non-empty string (leave api_key out for none, on a loopback host)",
            )
        if server.api_key is None and not _is_loopback(server.host):
            raise self._error(
                ("server", "api_key"),
                f"required because server.host {server.host!r} is not a loopback address, so "
                "anyone who can reach the port could publish and read events: set api_key "
                "under server in the config file, or the environment variable "
                "TIDINGS_SERVER__API_KEY (or bind host to 127.0.0.1)",
            )
        lease = ("server", "lease")
        if server.lease <= 0:
            raise self._error(lease, f"expected a duration > 0, got {self._written(lease, 0)}")
        limits: list[tuple[str, float]] = [
            (f"events.timeout ({settings.events.timeout:g}s)", settings.events.timeout)
        ]
        limits += [
            (f"the endpoint at {_dotted(path)} (timeout {ep.timeout:g}s)", float(ep.timeout or 0))
            for path, _, ep in endpoints
        ]
        for what, timeout in limits:
            if not fits_lease(timeout, server.lease):
                raise self._error(
                    lease,
                    f"expected a duration longer than every webhook timeout, got "
                    f"{self._written(lease, server.lease)}, not longer than {what}: "
                    f"{LEASE_RULE}; raise server.lease or lower that timeout",
                )


LEASE_RULE = (
    "a worker holds a claimed delivery for server.lease, which must outlast the request plus a "
    "margin to record its outcome, or the request is never started"
)


def fits_lease(timeout: float, lease: float) -> bool:
    """Whether a webhook ``timeout`` leaves ``lease`` room for the margin. The worker starts a
    request only while ``(lease - timeout) / 2`` of the lease is left, so any timeout below the
    lease can be sent; a few seconds less leaves room to wait for a free slot."""
    return timeout < lease


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
