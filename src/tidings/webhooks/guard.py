"""SSRF guard: keep webhook requests for user-supplied URLs away from internal networks.

An endpoint registered through the API names any URL it likes; without a guard, tidings would
POST to the cloud metadata service, the database admin port or anything else on its network.

Two checks, because a name's answer can change between them (DNS rebinding):

* :func:`resolve_checked` when an endpoint is registered (and before each delivery, if wanted):
  refuses the URL if *any* address its host resolves to is blocked, so one public record cannot
  carry a private one through.
* :class:`GuardedResolver` in the delivery session's ``aiohttp.TCPConnector``: judges the
  addresses actually connected to and drops the blocked ones at connect time.

aiohttp does not consult the resolver for IP-literal hosts (``http://10.0.0.1/``), so the
delivery worker must call :func:`check_ip_literal` (or :func:`resolve_checked`, which handles
literals too) before each request to a guarded endpoint, and must not follow redirects
(``allow_redirects=False``): a redirect's target would skip both checks.

Networks an operator trusts go in ``events.allow_networks``; an address inside one is allowed.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from tidings.urls import redact_url

__all__ = [
    "BlockedAddressError",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "UnsafeURL",
    "blocked_reason",
    "check_ip_literal",
    "check_url",
    "resolve_checked",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALLOW_HINT = "events.allow_networks"

# First match names the reason, so specific ranges come before the ranges that contain them.
_V4_BLOCKED: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "'this network' (0.0.0.0/8, reaches the local host on Linux)"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("169.254.169.254/32", "the cloud metadata service"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation (TEST-NET-1)"),
        ("198.51.100.0/24", "documentation (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation (TEST-NET-3)"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_V6_BLOCKED: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fd00:ec2::254/128", "the cloud metadata service (AWS IPv6)"),
        ("fc00::/7", "private (unique local, fc00::/7)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
        ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
        ("100::/64", "discard-only"),
        ("2001:db8::/32", "documentation"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
# Legacy numeric IPv4 spellings ("127.1", "2130706433", "0x7f.0.0.1") that resolvers still map
# onto addresses; refused so a URL always shows the address it reaches.
_NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.I)


class UnsafeURL(ValueError):
    """A webhook URL tidings refuses to call: malformed, or reaching a blocked address."""

    def __init__(self, url: str, reason: str, *, address: str | None = None) -> None:
        self.url = redact_url(url)
        self.reason = reason
        self.address = address
        if address is None:
            message = f"webhook URL {self.url}: {reason}"
        else:
            bare = address.partition("%")[0]  # no IPv6 zone in a network
            prefix = 128 if ":" in bare else 32
            message = (
                f"webhook URL {self.url} reaches {address}, which is {reason}; if this endpoint "
                f"is meant to reach that network, add it (e.g. '{bare}/{prefix}') to "
                f"{_ALLOW_HINT}"
            )
        super().__init__(message)


class BlockedAddressError(OSError):
    """Raised by :class:`GuardedResolver`; aiohttp wraps it in ``ClientConnectorError``."""

    def __init__(self, host: str, message: str) -> None:
        # (errno, strerror) so aiohttp's ClientConnectorError shows the message.
        super().__init__(errno.EACCES, message)
        self.host = host


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address delivers packets to, and how it is embedded."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    value = int(ip)
    high = value >> 32
    if high == 0 and value > 1:  # ::/96 except :: and ::1
        return ipaddress.IPv4Address(value), "IPv4-compatible"
    if high == 0xFFFF0000:  # ::ffff:0:a.b.c.d
        return ipaddress.IPv4Address(value & 0xFFFFFFFF), "IPv4-translated"
    if ip in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    return None


def blocked_reason(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``ip`` must not be called (e.g. ``"loopback"``), or None when it may be.

    IPv6 forms that embed an IPv4 address (mapped, compatible, 6to4, NAT64) are judged by that
    IPv4 address, since that is where the packets go.
    """
    if any(ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner, kind = embedded
            reason = blocked_reason(inner, allow)
            return None if reason is None else f"{kind} {inner}: {reason}"
        for net6, reason6 in _V6_BLOCKED:
            if ip in net6:
                return reason6
    else:
        for net4, reason4 in _V4_BLOCKED:
            if ip in net4:
                return reason4
    if not ip.is_global:
        return "not a public internet address"
    return None


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:
        reason = f"cannot be parsed ({exc}); expected http(s)://host[:port]/path"
        raise UnsafeURL(url, reason) from None


def check_url(url: str) -> None:
    """Refuse a URL whose syntax is not an http(s) URL with a host and a valid port."""
    if not isinstance(url, str) or not url:
        raise UnsafeURL(str(url), "expected an http:// or https:// URL, got an empty value")
    parts = _split(url)
    if parts.scheme.lower() not in ("http", "https"):
        got = f"'{parts.scheme}'" if parts.scheme else "none"
        raise UnsafeURL(url, f"scheme must be http or https, got {got}")
    host = parts.hostname
    if not host:
        raise UnsafeURL(url, "has no host; expected http(s)://host[:port]/path")
    try:
        port = parts.port
    except ValueError:
        raise UnsafeURL(url, "port must be a number from 1 to 65535") from None
    if port == 0:
        raise UnsafeURL(url, "port must be a number from 1 to 65535, got 0")
    if _NUMERIC_HOST.fullmatch(host) and _literal(host) is None:
        raise UnsafeURL(
            url, f"host {host!r} is a legacy numeric address form; write it as a dotted quad"
        )


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_ip_literal(url: str, allow: Sequence[IPNetwork] = ()) -> None:
    """Refuse a URL whose host is a blocked IP literal; names are left to the resolver.

    aiohttp connects to IP literals without asking the resolver, so :class:`GuardedResolver`
    never sees them: call this before each request to a guarded endpoint.
    """
    host = _split(url).hostname
    ip = _literal(host) if host else None
    if ip is None:
        return
    reason = blocked_reason(ip, allow)
    if reason is not None:
        raise UnsafeURL(url, reason, address=str(ip))


async def resolve_checked(url: str, allow: Sequence[IPNetwork] = ()) -> list[str]:
    """The addresses ``url``'s host resolves to, after refusing the URL if any is blocked.

    Raises :class:`UnsafeURL` for a malformed or blocked URL, and ``OSError``
    (``socket.gaierror``) when the name does not resolve, which may be temporary.
    """
    check_url(url)
    parts = urlsplit(url)
    host = parts.hostname
    assert host is not None  # check_url guarantees it
    literal = _literal(host)
    if literal is not None:
        check_ip_literal(url, allow)
        return [str(literal)]
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise OSError(errno.EADDRNOTAVAIL, f"webhook URL {redact_url(url)}: no address")
    for address in addresses:
        reason = blocked_reason(ipaddress.ip_address(address), allow)
        if reason is not None:
            raise UnsafeURL(url, reason, address=address)
    return addresses


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops blocked addresses from every answer, at connect time.

    Checking at registration is not enough: the name may later resolve elsewhere (DNS
    rebinding). A host left with no allowed address fails with :class:`BlockedAddressError`,
    which aiohttp reports as ``ClientConnectorError``.
    """

    def __init__(
        self, allow: Sequence[IPNetwork] = (), *, resolver: AbstractResolver | None = None
    ) -> None:
        self.allow = tuple(allow)
        # The default resolver needs a running loop, so it is made on first use.
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._resolver is None:
            self._resolver = DefaultResolver()
        results = await self._resolver.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refused: list[str] = []
        for result in results:
            reason = blocked_reason(ipaddress.ip_address(result["host"]), self.allow)
            if reason is None:
                kept.append(result)
            else:
                refused.append(f"{result['host']}: {reason}")
        if not kept:
            raise BlockedAddressError(
                host,
                f"refusing to connect to {host!r}: every address it resolves to is blocked "
                f"({'; '.join(refused) or 'none'}); if this endpoint is meant to reach that "
                f"network, add it to {_ALLOW_HINT}",
            )
        return kept

    async def close(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()
