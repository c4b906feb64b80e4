"""The extra check of an action that arrives from outside (a trigger saved over HTTP): where it
would connect.

A trigger in the config file is the operator's and may mail a relay on localhost. One saved
through the API names any host it likes: without this check an ``email`` action would open an
SMTP session to the cloud metadata service, the database or Redis on the server's network, and
a ``webhook`` action's ``url`` would be accepted here only to go dead at delivery. So the SMTP
``host`` of an email action and the ``url`` of a webhook action are judged by the webhook SSRF
guard (``webhooks/guard.py``) when the definition is written, on every path (create, replace,
patch), with the networks the operator trusts (``events.allow_networks``). A webhook delivery is
guarded again at connect time (its endpoint is an API endpoint).
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from tidings.triggers.actions.base import ActionOptionError
from tidings.triggers.actions.registry import validate_action
from tidings.triggers.definitions import ActionSpec
from tidings.webhooks.guard import IPNetwork, UnsafeURL, blocked_reason, check_url

__all__ = ["check_smtp_host", "check_webhook_url", "untrusted_action_validator"]

_HINT = "events.allow_networks"
RESOLVE_TIMEOUT = 2.0  # seconds a host name may take to resolve
_RESOLVERS = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="tidings-resolve")


def _addresses(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    # bounded: a PATCH checks inside its transaction, so a slow name server must not hold it
    future = _RESOLVERS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=RESOLVE_TIMEOUT)
    except concurrent.futures.TimeoutError:
        raise OSError(f"no answer within {RESOLVE_TIMEOUT:g}s") from None
    return list(dict.fromkeys(str(info[4][0]).partition("%")[0] for info in infos))


def _judge(
    action: str, option: str, host: str, port: int, allow: Sequence[IPNetwork], *, strict: bool
) -> None:
    try:
        addresses = _addresses(host, port)
    except OSError as exc:
        if not strict:  # judged again when it connects
            return
        raise ActionOptionError(
            action, option, f"host {host!r} does not resolve ({exc}); give a reachable host"
        ) from None
    for address in addresses:
        reason = blocked_reason(ipaddress.ip_address(address), allow)
        if reason is not None:
            bare = f"{address}/{128 if ':' in address else 32}"
            raise ActionOptionError(
                action,
                option,
                f"host {host!r} reaches {address}, which is {reason}; a trigger saved through "
                f"the API may not connect there. Use a public host, define the trigger in the "
                f"config file, or add the network (e.g. '{bare}') to {_HINT}",
            )


def check_smtp_host(host: str, port: int, allow: Sequence[IPNetwork] = ()) -> None:
    """Refuse (``ActionOptionError`` on ``host``) an SMTP host reaching a blocked address, or
    one that does not resolve (an SMTP session has no guard at connect time)."""
    _judge("email", "host", host, port, allow, strict=True)


def check_webhook_url(url: str, allow: Sequence[IPNetwork] = ()) -> None:
    """Refuse (``ActionOptionError`` on ``url``) a malformed URL or one reaching a blocked
    address; the message shows the URL with its password redacted. A name that does not
    resolve now is let by: the delivery's resolver judges the addresses it connects to."""
    try:
        check_url(url)
    except UnsafeURL as exc:
        raise ActionOptionError("webhook", "url", str(exc)) from None
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    assert parts.hostname is not None  # check_url guarantees it
    _judge("webhook", "url", parts.hostname, port, allow, strict=False)


def untrusted_action_validator(
    allow: Sequence[IPNetwork] | Callable[[], Sequence[IPNetwork]] = (),
) -> Callable[[ActionSpec], None]:
    """``validate_action`` for definitions from outside: the usual option checks, then the
    SSRF guard on where an ``email`` or ``webhook`` action connects. ``allow`` may be a
    callable, asked at each check, so a config reload's ``allow_networks`` applies at once."""

    def validate(spec: ActionSpec) -> None:
        validate_action(spec)
        allowed = tuple(allow() if callable(allow) else allow)
        options = spec.options or {}
        if spec.type == "email":
            ssl = options.get("ssl") is True
            port = options.get("port") or (465 if ssl else 25)
            check_smtp_host(str(options.get("host") or "localhost"), int(port), allowed)
        elif spec.type == "webhook" and options.get("url"):
            check_webhook_url(str(options["url"]), allowed)

    return validate
