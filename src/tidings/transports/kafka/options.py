"""The options a kafka URL or ``open_transport`` may give, and the security settings they make."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import unquote

from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from tidings.transport import TransportError
from tidings.transports.common import Options

_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TLS_OPTIONS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_context")
# Every option a kafka URL's query or open_transport's keywords may give.
_OPTIONS = frozenset({
    "prefix", "topic", "topic_per_type", "partitions", "replication", "idempotent",
    "connect_timeout", "publish_timeout", "linger_ms", "max_batch_size", "client_id",
    "heartbeat_interval", "session_timeout", "metadata_max_age", "fetch_max_wait",
    "fetch_min_bytes",
    "commit_interval", "revoke_drain", "gap_wait", "on_error",
    "security_protocol", "sasl_mechanism", *_TLS_OPTIONS,
})  # fmt: skip
# What connecting may raise: aiokafka's SCRAM client fails with KeyError/ValueError when the
# broker answers a refusal ("e=unknown-user") instead of a server signature.
_CONNECT_ERRORS = (TimeoutError, KafkaError, OSError, KeyError, ValueError)
_OPT = Options("kafka")


def _parse_netloc(netloc: str) -> tuple[list[str], str | None, str | None]:
    """``[user:pass@]host:port[,host:port]`` -> (["host:port", ...], user, password)."""
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, secret = (unquote(x) for x in userinfo.partition(":"))
        username, password = user or None, secret  # "@host" names no user
    hosts: list[str] = []
    for raw in netloc.split(","):
        item = raw.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "9092"
        if not host or not port.isdigit():
            raise TransportError(
                f"kafka URL: broker {item!r} is not host:port (e.g. kafka://localhost:9092)"
            )
        hosts.append(f"{host}:{port}")
    if not hosts:
        raise TransportError("kafka URL names no broker; expected kafka://host:port")
    return hosts, username, password


def _ssl_context(opt: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context: the given ``ssl_context``, else one verifying the broker's certificate
    against ``ssl_cafile`` (default: the system's trust store), with an optional client
    certificate for brokers that require mutual TLS."""
    given = opt.get("ssl_context")
    files = [name for name in _TLS_OPTIONS[:-1] if opt.get(name) is not None]
    if given is not None:
        if not isinstance(given, ssl.SSLContext):
            raise TransportError(
                f"kafka option ssl_context: expected an ssl.SSLContext, got {type(given).__name__}"
            )
        if files:
            raise TransportError(
                f"kafka: ssl_context and {', '.join(files)} were both given; configure the "
                "certificates in the context, or drop ssl_context"
            )
        return given
    cafile = opt.get("ssl_cafile")
    certfile, keyfile = opt.get("ssl_certfile"), opt.get("ssl_keyfile")
    try:
        context = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    except (OSError, ValueError) as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else f"not PEM ({exc})"
        raise TransportError(
            f"kafka option ssl_cafile: cannot load the CA certificates from {cafile!r} "
            f"({reason}); give the path of the broker's CA bundle in PEM"
        ) from None
    if keyfile is not None and certfile is None:
        raise TransportError(
            "kafka option ssl_keyfile: given without ssl_certfile; give the client "
            "certificate (PEM) too"
        )
    if certfile is not None:
        password = opt.get("ssl_password")
        try:
            context.load_cert_chain(
                str(certfile),
                None if keyfile is None else str(keyfile),
                None if password is None else str(password),
            )
        except (OSError, ValueError) as exc:
            reason = "no such file" if isinstance(exc, FileNotFoundError) else f"{exc}"
            raise TransportError(
                f"kafka options ssl_certfile/ssl_keyfile: cannot load the client certificate "
                f"{certfile!r} with key {keyfile or certfile!r} ({reason}); give PEM files "
                "(and ssl_password if the key is encrypted)"
            ) from None
    return context


def _security(
    tls: bool, username: str | None, password: str | None, opt: dict[str, Any]
) -> dict[str, Any]:
    """aiokafka's security settings from the scheme, the URL's user and the options.

    ``kafkas://`` means TLS; a user in the URL means SASL. An explicit ``security_protocol``
    must agree with both, so that credentials or certificates are never silently unused.
    """
    sasl = username is not None
    default = ("SASL_" if sasl else "") + ("SSL" if tls else "PLAINTEXT")
    protocol = str(opt.get("security_protocol", default)).strip().upper()
    if protocol not in _PROTOCOLS:
        raise _OPT.error(
            "security_protocol", f"one of {', '.join(_PROTOCOLS)}", opt.get("security_protocol")
        )
    uses_tls = protocol.endswith("SSL")
    if tls and not uses_tls:
        raise TransportError(
            f"kafka: kafkas:// means TLS but security_protocol is {protocol}; use kafka:// "
            "for a plaintext connection, or SSL / SASL_SSL"
        )
    if protocol.startswith("SASL_") and not sasl:
        raise TransportError(
            f"kafka: security_protocol {protocol} needs a user and password in the URL: "
            "kafka://user:password@host:port (percent-encode special characters)"
        )
    if sasl and not protocol.startswith("SASL_"):
        raise TransportError(
            f"kafka: the URL has a user and password but security_protocol {protocol} does not "
            "send them; use SASL_PLAINTEXT or SASL_SSL, or remove them from the URL"
        )
    given_tls = [name for name in _TLS_OPTIONS if opt.get(name) is not None]
    if given_tls and not uses_tls:
        raise TransportError(
            f"kafka option {given_tls[0]}: only used with TLS; use a kafkas:// URL or "
            "security_protocol=SSL (SASL_SSL with a user)"
        )
    settings: dict[str, Any] = {"security_protocol": protocol}
    if sasl:
        mechanism = str(opt.get("sasl_mechanism", "PLAIN")).strip().upper()
        if mechanism not in _MECHANISMS:
            raise _OPT.error(
                "sasl_mechanism", f"one of {', '.join(_MECHANISMS)}", opt.get("sasl_mechanism")
            )
        settings.update(
            sasl_mechanism=mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password or "",
        )
    elif opt.get("sasl_mechanism") is not None:
        raise TransportError(
            "kafka option sasl_mechanism: given without a user and password in the URL "
            "(kafka://user:password@host:port)"
        )
    if uses_tls:
        settings["ssl_context"] = _ssl_context(opt)
    return settings
