"""A webhook endpoint: where matching events go, how they are signed, paced and retried.

One frozen value shared by the config loader (endpoints an operator writes in YAML), the HTTP API
(endpoints registered at run time), the delivery queue (which stores them) and the workers.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from tidings.config import WebhookSettings, endpoint_id_for_url
from tidings.retry import RetryPolicy
from tidings.topics import Pattern, compile_pattern
from tidings.urls import redact_url

__all__ = [
    "INHERITED",
    "Auth",
    "Endpoint",
    "PayloadFormat",
    "endpoint_id_for_url",
    "from_settings",
    "inherit",
]

# "seed": seed 000's body {"event_type", "timestamp", "data"}; "cloudevents": structured mode
# (the whole envelope as application/cloudevents+json); "cloudevents-binary": data as the body,
# attributes as ce-* headers.
PayloadFormat = Literal["seed", "cloudevents", "cloudevents-binary"]


class Auth(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One optional authentication header per endpoint (on top of the signature)."""

    bearer: str | None = None
    username: str | None = None  # basic auth, with password
    password: str | None = None
    header: str | None = None  # an API-key header name, with value
    value: str | None = None

    def headers(self) -> dict[str, str]:
        """The header(s) this auth adds to every request."""
        out: dict[str, str] = {}
        if self.bearer is not None:
            out["Authorization"] = f"Bearer {self.bearer}"
        elif self.username is not None:
            token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            out["Authorization"] = f"Basic {token}"
        if self.header is not None and self.value is not None:
            out[self.header] = self.value
        return out


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A delivery target. ``secrets`` all sign each request (rotation: old and new verify)."""

    id: str
    url: str
    events: tuple[str, ...] = ("**",)  # glob patterns (tidings.topics)
    secrets: tuple[str, ...] = ()  # "whsec_<base64>"; empty: requests are not signed
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    auth: Auth | None = None
    timeout: float = 10.0  # seconds per request
    rate_limit: float | None = None  # requests per second (token bucket), None: unlimited
    burst: int | None = None  # bucket size, default max(1, rate_limit)
    max_in_flight: int = 10
    enabled: bool = True
    format: PayloadFormat = "seed"
    compress: Literal["none", "gzip"] = "none"  # gzip: bodies of 1 KiB and more
    max_retries: int = 3  # attempts after the first
    retry_delay: float = 5.0  # first retry delay; doubles per attempt
    max_delay: float = 3600.0
    jitter: float = 0.2  # fraction of each delay drawn at random
    failure_window: float = 86400.0  # auto-disable after failing this long without a success
    source: Literal["config", "api"] = "config"
    disabled_reason: str | None = None
    url_from_api: bool = False  # a config endpoint whose URL was changed through the API

    def guarded(self, guard_config_endpoints: bool) -> bool:
        """Whether the SSRF guard checks this endpoint's address when connecting: a URL that
        came through the API is untrusted whatever endpoint it lands on; the file's are the
        operator's unless ``events.guard_config_endpoints`` says otherwise."""
        return self.source == "api" or self.url_from_api or guard_config_endpoints

    def pattern_list(self) -> list[Pattern]:
        return [compile_pattern(p) for p in self.events]

    def matches(self, event_type: str) -> bool:
        return any(p.matches(event_type) for p in self.pattern_list())

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.max_retries,
            initial_delay=self.retry_delay,
            max_delay=self.max_delay,
            backoff_factor=2.0,
            jitter=self.jitter,
        )

    def public(self) -> dict[str, object]:
        """What the API and logs may show: secrets and auth values never leave."""
        data: dict[str, object] = msgspec.to_builtins(self)
        data["url"] = redact_url(self.url)  # a password in the URL is a secret too
        data.pop("secrets", None)
        data["signed"] = bool(self.secrets)
        data["auth"] = None if self.auth is None else "***"
        data["headers"] = dict.fromkeys(self.headers, "***")
        return data


# The endpoint keys the ``events`` section gives every endpoint that leaves them out.
INHERITED = (
    "timeout", "format", "compress", "max_retries", "retry_delay", "max_delay", "jitter",
    "failure_window",
)  # fmt: skip


def inherit(section: WebhookSettings, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` endpoint keys, plus the ``events`` section's value for each key of
    ``INHERITED`` that ``given`` leaves out (or sets to None): the one rule by which endpoints
    from the file and endpoints registered through the API take the config's defaults."""
    merged = {name: getattr(section, name) for name in INHERITED}
    merged.update({name: value for name, value in given.items() if value is not None})
    # Durations are a float subclass; an endpoint holds plain seconds.
    return {name: float(v) if isinstance(v, float) else v for name, v in merged.items()}


def from_settings(section: WebhookSettings) -> list[Endpoint]:
    """The endpoints of a config's ``events`` section (``source="config"``)."""
    out: list[Endpoint] = []
    for endpoint_id, spec in section.resolved_endpoints():
        secret = spec.secret
        auth = spec.auth
        own = {
            "timeout": spec.timeout,
            "format": spec.format,
            "compress": spec.compress,
            "max_retries": spec.max_retries,
            "retry_delay": spec.retry_delay,
            "max_delay": spec.max_delay,
            "max_in_flight": spec.max_in_flight,
        }
        out.append(
            Endpoint(
                id=endpoint_id,
                url=spec.url,
                events=tuple(spec.events or ("**",)),
                secrets=()
                if secret is None
                else (secret,)
                if isinstance(secret, str)
                else tuple(secret),
                headers=dict(spec.headers),
                auth=None if auth is None else Auth(**msgspec.structs.asdict(auth)),
                rate_limit=spec.rate_limit,
                burst=spec.burst,
                enabled=spec.enabled,
                source="config",
                **inherit(section, own),
            )
        )
    return out
