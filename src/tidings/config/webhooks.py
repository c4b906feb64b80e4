"""The ``events`` section: webhook endpoints and the delivery queue's settings, with the
checks that need more than a type, and the endpoints resolved from it
(``tidings.webhooks.endpoint.from_settings`` turns them into endpoints)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from tidings.config.durations import Duration
from tidings.config.errors import MASK, ConfigError, Invalid, Written, dotted, mask, show
from tidings.headers import headers_problem
from tidings.topics import PatternError, compile_pattern
from tidings.urls import redact_url

__all__ = [
    "AuthSettings",
    "Compression",
    "EndpointSettings",
    "PayloadFormat",
    "WebhookSettings",
    "build_endpoints",
    "check_events",
    "endpoint_id_for_url",
    "redact_endpoint",
]

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
            return [(endpoint_id, spec) for _, endpoint_id, spec in build_endpoints(self)]
        except Invalid as exc:
            raise ConfigError("settings", dotted(exc.path), exc.problem) from None


_WEBHOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_SECRET_PREFIX = "whsec_"
_NEW_SECRET = (
    "python -c \"import base64, os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
)


def redact_endpoint(spec: EndpointSettings) -> EndpointSettings:
    secret, auth = spec.secret, spec.auth
    return msgspec.structs.replace(
        spec,
        url=redact_url(spec.url),
        secret=mask(secret) if not isinstance(secret, list) else [MASK] * len(secret),
        headers=dict.fromkeys(spec.headers, MASK),
        auth=None
        if auth is None
        else msgspec.structs.replace(
            auth, bearer=mask(auth.bearer), password=mask(auth.password), value=mask(auth.value)
        ),
    )


def _check_url(url: str, path: tuple[Any, ...]) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise Invalid(
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
        raise Invalid(
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
            raise Invalid(
                (*path, "secret"),
                "expected at least one secret; leave secret out to send unsigned requests",
            )
        for i, secret in enumerate(spec.secret):
            _check_secret(secret, (*path, "secret", i))
    if spec.events is not None:
        if not spec.events:
            raise Invalid(
                (*path, "events"), "expected at least one pattern ('**' matches every event type)"
            )
        for i, pattern in enumerate(spec.events):
            try:
                compile_pattern(pattern)
            except PatternError as exc:
                raise Invalid((*path, "events", i), str(exc)) from None
    problem = headers_problem(spec.headers, spec.auth)
    if problem is not None:
        raise Invalid((*path, *problem[0]), problem[1])
    if spec.timeout is not None and spec.timeout <= 0:
        raise Invalid((*path, "timeout"), f"expected a duration > 0, got {spec.timeout:g}s")
    if spec.rate_limit is not None and not math.isfinite(spec.rate_limit):
        raise Invalid((*path, "rate_limit"), "expected a finite number of requests per second")


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
        raise Invalid(
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


def build_endpoints(
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
            raise Invalid(type_path, str(exc)) from None
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
                        raise Invalid(
                            path,
                            f"same URL as {dotted(other_path)} with a different "
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
            raise Invalid(
                path,
                "expected a name of letters, digits, '_', '.' and '-' (at most 64, starting "
                "with a letter or digit): it becomes the endpoint id in the API",
            )
        if name in taken:
            raise Invalid(path, f"this name is the id of the endpoint at {dotted(taken[name])}")
        _check_spec(spec, path)
        events = tuple(spec.events) if spec.events is not None else ("**",)
        built.append((path, name, _endpoint(spec.url, events, spec, section, path)))
    return built


def check_events(
    events: WebhookSettings, written: Written
) -> list[tuple[tuple[Any, ...], str, EndpointSettings]]:
    """What the schema cannot say about the ``events`` section; returns its endpoints as
    ``build_endpoints`` does."""
    if events.max_delay < events.retry_delay:
        path = ("events", "max_delay")
        raise Invalid(
            path,
            f"expected a duration >= retry_delay ({events.retry_delay:g}s), "
            f"got {written(path, events.max_delay)}",
        )
    _check_source(events)
    for name in ("timeout", "failure_window", "source_ack_wait"):
        if getattr(events, name) <= 0:
            path = ("events", name)
            raise Invalid(path, f"expected a duration > 0, got {written(path, 0)}")
    for i, network in enumerate(events.allow_networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise Invalid(
                ("events", "allow_networks", i),
                "expected a network in CIDR notation such as 10.0.0.0/8, 192.168.1.7/32 or "
                f"fd00::/8, got {network!r}",
            ) from None
    return build_endpoints(events)


def _check_source(events: WebhookSettings) -> None:
    source = events.source
    scheme, sep, rest = source.partition("://")
    if source not in ("http", "store") and not (sep and _SCHEME.fullmatch(scheme) and rest):
        raise Invalid(
            ("events", "source"),
            "expected http (events come in through POST /events), store (follow the event "
            "store: every writer) or a transport URL such as redis://localhost:6379/0, "
            f"got {show(redact_url(source))}",
        )
    if sep and scheme.lower() in ("sqlite", "memory"):
        raise Invalid(
            ("events", "source"),
            f"got {show(redact_url(source))}, which is not a transport other processes "
            "publish to; to deliver what any writer appends to the event store (store.url) "
            "write `source: store`; a URL here names a transport (redis://, nats://, "
            "kafka://, amqp://, postgresql:// for LISTEN/NOTIFY)",
        )
    if not _WEBHOOK_NAME.fullmatch(events.source_consumer):
        raise Invalid(
            ("events", "source_consumer"),
            "expected a name of letters, digits, '.', '_' or '-' (up to 64), got "
            f"{show(events.source_consumer)}",
        )
