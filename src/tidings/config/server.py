"""The ``store`` and ``server`` sections (what ``tidings serve`` reads), and their checks."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Any

import msgspec

from tidings.config.durations import Duration
from tidings.config.errors import Invalid, Written, dotted
from tidings.config.webhooks import EndpointSettings
from tidings.urls import redact_url

__all__ = [
    "LEASE_RULE",
    "SCOPES",
    "ApiKeySettings",
    "ServerSettings",
    "StoreSettings",
    "check_server",
    "check_store",
    "fits_lease",
]


class StoreSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``store`` section: where events and deliveries are kept (``tidings.store`` URL)."""

    url: str = "sqlite:///tidings.db"  # a file in the working directory


SCOPES = ("read", "publish", "admin")


class ApiKeySettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One entry of ``server.api_keys``: a named key with its scopes, given as the key itself
    (``key: ${TIDINGS_CI_KEY}``, from the environment) or as its SHA-256 (``sha256: <hex>``,
    so the file holds nothing that opens the API). Several entries with the same scopes let a
    key rotate: add the new one, move clients, remove the old one."""

    name: str
    key: str | None = None
    sha256: str | None = None
    scopes: tuple[str, ...] = ("read",)


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``server`` section of ``tidings serve``."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000  # 0: any free port
    api_key: str | None = None  # required unless host is a loopback address (or api_keys)
    api_keys: tuple[ApiKeySettings, ...] = ()  # named keys with scopes (read, publish, admin)
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


def check_server(
    server: ServerSettings,
    events_timeout: float,
    endpoints: list[tuple[tuple[Any, ...], str, EndpointSettings]],
    written: Written,
) -> None:
    """The API key a non-loopback host needs, and a lease longer than every webhook timeout
    (``events_timeout`` and each endpoint's)."""
    if server.api_key == "":
        raise Invalid(
            ("server", "api_key"),
            "expected a non-empty string (leave api_key out for none, on a loopback host)",
        )
    _check_api_keys(server.api_keys)
    if server.api_key is None and not server.api_keys and not _is_loopback(server.host):
        raise Invalid(
            ("server", "api_key"),
            f"required because server.host {server.host!r} is not a loopback address, so "
            "anyone who can reach the port could publish and read events: set api_key "
            "under server in the config file, or the environment variable "
            "TIDINGS_SERVER__API_KEY (or bind host to 127.0.0.1)",
        )
    lease = ("server", "lease")
    if server.lease <= 0:
        raise Invalid(lease, f"expected a duration > 0, got {written(lease, 0)}")
    limits: list[tuple[str, float]] = [(f"events.timeout ({events_timeout:g}s)", events_timeout)]
    limits += [
        (f"the endpoint at {dotted(path)} (timeout {ep.timeout:g}s)", float(ep.timeout or 0))
        for path, _, ep in endpoints
    ]
    for what, timeout in limits:
        if not fits_lease(timeout, server.lease):
            raise Invalid(
                lease,
                f"expected a duration longer than every webhook timeout, got "
                f"{written(lease, server.lease)}, not longer than {what}: "
                f"{LEASE_RULE}; raise server.lease or lower that timeout",
            )


_HEX = frozenset("0123456789abcdef")


def _check_api_keys(keys: tuple[ApiKeySettings, ...]) -> None:
    names: set[str] = set()
    for i, entry in enumerate(keys):
        where = ("server", "api_keys", i)
        if not entry.name.strip():
            raise Invalid((*where, "name"), "expected a non-empty name (say who holds the key)")
        if entry.name in names:
            raise Invalid((*where, "name"), f"{entry.name!r} is given twice; names are unique")
        names.add(entry.name)
        if (entry.key is None) == (entry.sha256 is None):
            raise Invalid(
                where,
                "expected exactly one of key (the key, e.g. ${TIDINGS_API_KEY}) or sha256 (the "
                "hex SHA-256 of the key: printf %s KEY | sha256sum)",
            )
        if entry.key is not None and len(entry.key) < 16:
            raise Invalid(
                (*where, "key"),
                "expected at least 16 characters (a key is a secret: make one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)",
            )
        if entry.sha256 is not None and (
            len(entry.sha256) != 64 or not set(entry.sha256.lower()) <= _HEX
        ):
            raise Invalid((*where, "sha256"), "expected 64 hex digits (a SHA-256 digest)")
        unknown = [s for s in entry.scopes if s not in SCOPES]
        if unknown or not entry.scopes:
            raise Invalid(
                (*where, "scopes"),
                f"expected a non-empty list of {', '.join(SCOPES)}, got {list(entry.scopes)!r}",
            )


def check_store(store: StoreSettings) -> None:
    """``store.url`` names a store by its scheme."""
    scheme, sep, _ = store.url.partition("://")
    if not (sep and scheme):
        raise Invalid(
            ("store", "url"),
            "expected a store URL such as sqlite:///tidings.db, memory:// or "
            f"postgresql://user@host:5432/db, got {redact_url(store.url)!r}",
        )
