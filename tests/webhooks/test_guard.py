"""SSRF guard: which addresses are blocked, URL syntax, registration-time resolution, and a real
aiohttp session whose connector refuses blocked addresses at connect time."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from tidings.webhooks.guard import (
    BlockedAddressError,
    GuardedResolver,
    IPNetwork,
    UnsafeURL,
    blocked_reason,
    check_ip_literal,
    check_url,
    resolve_checked,
)

LOCAL: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),  # localhost may also resolve to ::1
)

BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.1.2.3", "private (RFC 1918)"),
    ("172.16.0.1", "private (RFC 1918)"),
    ("172.31.255.255", "private (RFC 1918)"),
    ("192.168.1.1", "private (RFC 1918)"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fd00:ec2::254", "cloud metadata"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1: loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped 169.254.169.254: the cloud metadata"),
    ("::ffff:10.0.0.1", "IPv4-mapped 10.0.0.1: private"),
    ("::127.0.0.1", "IPv4-compatible 127.0.0.1: loopback"),
    ("::ffff:0:10.0.0.1", "IPv4-translated 10.0.0.1: private"),
    ("2002:7f00:1::", "6to4 127.0.0.1: loopback"),
    ("2002:a9fe:a9fe::1", "6to4 169.254.169.254: the cloud metadata"),
    ("64:ff9b::7f00:1", "NAT64 127.0.0.1: loopback"),
    ("64:ff9b::a00:1", "NAT64 10.0.0.1: private"),
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",
    "172.32.0.0",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "reason"), BLOCKED)
def test_blocked_addresses(address: str, reason: str) -> None:
    got = blocked_reason(ipaddress.ip_address(address), ())
    assert got is not None and reason in got


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address), ()) is None


def test_allow_networks_open_exactly_what_they_contain() -> None:
    ten = [ipaddress.ip_network("10.0.0.0/8")]
    assert blocked_reason(ipaddress.ip_address("10.1.2.3"), ten) is None
    assert blocked_reason(ipaddress.ip_address("::ffff:10.1.2.3"), ten) is None  # embedded
    assert blocked_reason(ipaddress.ip_address("64:ff9b::a01:203"), ten) is None
    assert blocked_reason(ipaddress.ip_address("11.0.0.1"), ten) is None  # public anyway
    assert blocked_reason(ipaddress.ip_address("192.168.0.1"), ten) is not None
    assert blocked_reason(ipaddress.ip_address("127.0.0.1"), ten) is not None
    mapped = [ipaddress.ip_network("::ffff:10.0.0.0/104")]
    assert blocked_reason(ipaddress.ip_address("::ffff:10.1.2.3"), mapped) is None
    metadata = ipaddress.ip_address("169.254.169.254")
    assert blocked_reason(metadata, [ipaddress.ip_network("169.254.169.254/32")]) is None
    assert blocked_reason(metadata, [ipaddress.ip_network("::/0")]) is not None  # v6 ≠ v4


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "got an empty value"),
        ("ftp://example.com/x", "scheme must be http or https, got 'ftp'"),
        ("//example.com/x", "scheme must be http or https, got none"),
        ("http:///path", "has no host"),
        ("http://example.com:99999/", "port must be a number from 1 to 65535"),
        ("http://example.com:abc/", "port must be a number from 1 to 65535"),
        ("http://example.com:0/", "got 0"),
        ("http://[::1/", "cannot be parsed"),
        ("http://127.1/", "legacy numeric address form"),
        ("http://2130706433/", "legacy numeric address form"),
        ("http://0x7f.0.0.1/", "legacy numeric address form"),
    ],
)
def test_check_url_syntax_errors(url: str, expected: str) -> None:
    with pytest.raises(UnsafeURL, match=re.escape(expected)):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "HTTP://Example.com:8080/x?y=1",
        "http://[2001:db8::1]:443/",
        "https://user:pw@example.com/",
        "http://127.0.0.1/",  # syntax only: addresses are judged elsewhere
        "http://123.example/",
    ],
)
def test_check_url_accepts(url: str) -> None:
    check_url(url)


def test_unsafe_url_message_redacts_and_says_what_to_do() -> None:
    with pytest.raises(UnsafeURL) as info:
        check_ip_literal("http://alice:s3cret@127.0.0.1:8080/hook", ())
    message = str(info.value)
    assert "s3cret" not in message and "alice:***@127.0.0.1:8080/hook" in message
    assert "127.0.0.1, which is loopback" in message
    assert "'127.0.0.1/32'" in message and "events.allow_networks" in message
    assert info.value.address == "127.0.0.1" and info.value.reason == "loopback"
    with pytest.raises(UnsafeURL, match=r"'fe80::1/128'"):
        check_ip_literal("http://[fe80::1%25eth0]/", ())


def test_check_ip_literal_leaves_names_to_the_resolver() -> None:
    check_ip_literal("http://localhost/", ())
    check_ip_literal("http://8.8.8.8/", ())
    check_ip_literal("http://127.0.0.1/", LOCAL)
    with pytest.raises(UnsafeURL, match=r"IPv4-mapped 127\.0\.0\.1"):
        check_ip_literal("http://[::ffff:7f00:1]/", ())


async def test_resolve_checked_refuses_localhost_unless_allowed() -> None:
    with pytest.raises(UnsafeURL, match="which is loopback") as info:
        await resolve_checked("http://localhost:8080/hook", ())
    assert "events.allow_networks" in str(info.value)
    addresses = await resolve_checked("http://localhost:8080/hook", LOCAL)
    assert "127.0.0.1" in addresses or "::1" in addresses


async def test_resolve_checked_handles_literals_without_dns() -> None:
    assert await resolve_checked("https://8.8.8.8/x", ()) == ["8.8.8.8"]
    assert await resolve_checked("http://[2001:4860:4860::8888]/", ()) == ["2001:4860:4860::8888"]
    with pytest.raises(UnsafeURL, match="cloud metadata"):
        await resolve_checked("http://169.254.169.254/latest/meta-data/", ())
    with pytest.raises(UnsafeURL, match="scheme must be http or https"):
        await resolve_checked("file:///etc/passwd", ())


async def test_resolve_checked_refuses_if_any_record_is_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No DNS server is available offline: the loop's answer is replaced by a fixed one, the way
    # an attacker's zone would answer with one public and one private record.
    async def answer(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        records = {"mixed.test": ["8.8.8.8", "10.0.0.7"], "public.test": ["8.8.4.4", "8.8.8.8"]}
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in records[host]]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", answer)
    with pytest.raises(UnsafeURL, match=r"reaches 10\.0\.0\.7, which is private"):
        await resolve_checked("https://mixed.test/hook", ())
    assert await resolve_checked("https://public.test/hook", ()) == ["8.8.4.4", "8.8.8.8"]
    ten = [ipaddress.ip_network("10.0.0.0/8")]
    assert await resolve_checked("https://mixed.test/hook", ten) == ["8.8.8.8", "10.0.0.7"]


class StaticResolver(AbstractResolver):
    """Fixed DNS answers (no DNS server offline); lets a test change them, as rebinding does."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for a in self.table[host]
        ]

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def receiver() -> AsyncIterator[int]:
    """A real aiohttp server on 127.0.0.1; yields its port."""

    async def hook(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _post(url: str, resolver: GuardedResolver) -> str:
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, data=b"{}", timeout=aiohttp.ClientTimeout(total=5)) as resp,
    ):
        assert resp.status == 200
        return await resp.text()


async def test_session_refuses_localhost_at_connect_time(receiver: int) -> None:
    url = f"http://localhost:{receiver}/hook"
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await _post(url, GuardedResolver())
    assert isinstance(info.value.os_error, BlockedAddressError)
    assert "loopback" in str(info.value) and "events.allow_networks" in str(info.value)
    assert await _post(url, GuardedResolver(LOCAL)) == "ok"


async def test_session_refuses_a_name_rebound_to_a_private_address(receiver: int) -> None:
    table = {"hooks.test": ["127.0.0.1"]}
    url = f"http://hooks.test:{receiver}/hook"
    with pytest.raises(aiohttp.ClientConnectorError, match=r"'hooks\.test'.*loopback"):
        await _post(url, GuardedResolver(resolver=StaticResolver(table)))
    assert await _post(url, GuardedResolver(LOCAL, resolver=StaticResolver(table))) == "ok"


async def test_ip_literals_skip_the_resolver_so_the_literal_check_is_needed(
    receiver: int,
) -> None:
    url = f"http://127.0.0.1:{receiver}/hook"
    # aiohttp connects to a literal without asking the resolver: the guard cannot see it ...
    assert await _post(url, GuardedResolver()) == "ok"
    # ... which is why the worker calls check_ip_literal (or resolve_checked) first.
    with pytest.raises(UnsafeURL, match="loopback"):
        check_ip_literal(url, ())


async def test_resolver_drops_blocked_records_and_keeps_public_ones() -> None:
    inner = StaticResolver(
        {
            "mixed.test": ["10.0.0.1", "8.8.8.8", "::1", "2001:4860:4860::8888"],
            "metadata.google.internal": ["169.254.169.254"],
        }
    )
    guard = GuardedResolver(resolver=inner)
    kept = await guard.resolve("mixed.test", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in kept] == ["8.8.8.8", "2001:4860:4860::8888"]
    assert all(r["port"] == 443 for r in kept)
    blocked = r"169\.254\.169\.254: the cloud metadata"
    with pytest.raises(BlockedAddressError, match=blocked) as info:
        await guard.resolve("metadata.google.internal", 80)
    assert info.value.host == "metadata.google.internal"
    metadata_allowed: Sequence[IPNetwork] = [ipaddress.ip_network("169.254.169.254/32")]
    allowed = await GuardedResolver(metadata_allowed, resolver=inner).resolve(
        "metadata.google.internal", 80
    )
    assert [r["host"] for r in allowed] == ["169.254.169.254"]
    await guard.close()
    assert inner.closed


def test_resolver_can_be_built_before_the_loop_runs() -> None:
    guard = GuardedResolver(LOCAL)
    assert guard.allow == LOCAL
