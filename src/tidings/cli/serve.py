"""``tidings serve``: ingestion, the store and webhook delivery in one process."""

import errno
import socket
from typing import Annotated

import msgspec
import typer

from tidings.cli.app import _config_path, _out, app, fail, settings_from
from tidings.urls import redact_url as redact


def _is_loopback(host: str) -> bool:
    import ipaddress  # noqa: PLC0415

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address (default: server.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Listen port (default: server.port).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Log level.")] = "info",
) -> None:
    """Run ingestion, the event store and webhook delivery in one process (SIGHUP reloads)."""
    import logging  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415

    from tidings.cli.config import checked_triggers  # noqa: PLC0415
    from tidings.server.app import create_app  # noqa: PLC0415
    from tidings.server.service import Service  # noqa: PLC0415
    from tidings.server.stream import close_streams_on_exit  # noqa: PLC0415
    from tidings.store.base import StoreError  # noqa: PLC0415
    from tidings.transport import TransportError  # noqa: PLC0415

    settings = settings_from(ctx)
    checked_triggers(settings, _config_path(ctx))  # a bad trigger: one line naming its path
    server = settings.server
    if host is not None or port is not None:
        server = msgspec.structs.replace(
            server, host=host or server.host, port=port if port is not None else server.port
        )
        settings = msgspec.structs.replace(settings, server=server)
    if not _is_loopback(server.host) and not server.api_key and not server.api_keys:
        fail(
            f"serve: listening on {server.host} (beyond loopback) needs an API key; set "
            "server.api_key (or server.api_keys) in the config or TIDINGS_SERVER__API_KEY"
        )
    # The port is taken before anything else (the store, the sender process), so a port in
    # use is one clear line and leaves nothing behind; uvicorn then serves on this socket.
    sock = _listen(server.host, server.port)
    try:
        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            service = Service(settings, _config_path(ctx))
        except (StoreError, TransportError, TypeError) as exc:
            fail(str(exc))
        endpoints = len(service.queue.endpoints())
        bound_port = sock.getsockname()[1]
        _out().print(
            f"tidings serve: http://{server.host}:{bound_port} · store "
            f"{redact(settings.store.url)} · {endpoints} endpoint(s) · "
            f"webhooks from config {'on' if settings.events.enabled else 'off (events.enabled)'}",
            markup=False,
        )
        asgi = create_app(service)
        config = uvicorn.Config(
            asgi,
            host=server.host,
            port=bound_port,
            log_level=log_level.lower(),
            access_log=False,
        )
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown so that the previous
        # handler runs; a no-op handler there makes a clean shutdown exit 0 (not -15) for
        # supervisors that treat a signal death as a crash.
        import signal  # noqa: PLC0415

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        uv = uvicorn.Server(config)
        close_streams_on_exit(uv, asgi)  # live streams end on SIGTERM, or uvicorn waits on them
        uv.run(sockets=[sock])
    finally:
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (as uvicorn binds one), or a clear error naming the
    port and how to choose another."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        how = "--port N, or server.port in the config (TIDINGS_SERVER__PORT)"
        if exc.errno == errno.EADDRINUSE:
            fail(
                f"serve: port {port} on {host} is already in use (another tidings serve, or "
                f"another program); choose another with {how}"
            )
        if exc.errno == errno.EACCES:
            fail(
                f"serve: port {port} needs privileges to listen on; choose one above 1023 "
                f"with {how}"
            )
        fail(
            f"serve: cannot listen on {host}:{port}: {exc.strerror or exc}; check --host "
            f"(server.host) or choose another port with {how}"
        )
    return sock
