"""The ``tidings`` command.

Adding a command (``serve``, ``publish``, ``tail``, ``replay``, ``dlq``, ``migrate``): decorate a
function with ``@app.command()``, or build a ``typer.Typer`` group and ``app.add_typer`` it as
``config`` is; read settings with ``settings_from(ctx)`` and wrap the body in
``with user_errors():`` so that a user mistake prints one red line and exits 2 instead of a
traceback. ``main`` catches the same errors again as a last resort.
"""

import errno
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import typer
from rich.console import Console

import tidings
from tidings.config import CONFIG_ENV, ConfigError, Duration, Settings, load
from tidings.event import EventError
from tidings.topics import PatternError
from tidings.triggers.definitions import Trigger, TriggerError, parse_triggers
from tidings.urls import redact_url as redact

__all__ = ["EXIT_USER_ERROR", "USER_ERRORS", "app", "fail", "main", "settings_from", "user_errors"]

# Exceptions that mean "the input is wrong", not "tidings is broken": shown without a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, EventError, PatternError)
EXIT_USER_ERROR = 2

app = typer.Typer(
    name="tidings",
    help="Emit, keep, move, deliver and react to events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold secrets from the config
)
config_app = typer.Typer(help="Check configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@dataclass(slots=True)
class CliState:
    """Options of the root command, handed to subcommands through ``ctx.obj``."""

    config: Path | None = None


def _out() -> Console:
    # Built per call so the console writes to whatever sys.stdout is now (tests swap it).
    return Console(soft_wrap=True, highlight=False)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def _print_error(message: str) -> None:
    _err().print(f"error: {message}", style="red", markup=False)


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print ``message`` in red on stderr and exit with ``code``."""
    _print_error(message)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn ``USER_ERRORS`` raised in the block into ``fail``."""
    try:
        yield
    except USER_ERRORS as exc:
        fail(str(exc))


def settings_from(ctx: typer.Context, path: Path | None = None) -> Settings:
    """Settings from ``path``, else ``--config``, else ``$TIDINGS_CONFIG``, plus env vars."""
    state = ctx.find_object(CliState)
    with user_errors():
        return load(path if path is not None else state.config if state else None)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tidings {tidings.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help=f"Configuration file (default: ${CONFIG_ENV}).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Emit, keep, move, deliver and react to events."""
    ctx.obj = CliState(config=config)


# --- tidings config ---------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Duration):
        return _seconds(value)
    if isinstance(value, dict):
        return msgspec.json.encode(value).decode()
    return str(value)


def _rows(section: msgspec.Struct, prefix: str = "") -> Iterator[tuple[str, str]]:
    for name in section.__struct_fields__:
        value = getattr(section, name)
        if isinstance(value, msgspec.Struct):
            yield from _rows(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", _show(value)


def _summary(settings: Settings, triggers: Sequence[Trigger]) -> list[tuple[str, str]]:
    rows = [
        row
        for row in _rows(msgspec.structs.replace(settings, event_broker=None))
        if row[0] != "event_broker"
    ]
    ids = ", ".join(t.id if t.enabled else f"{t.id} (disabled)" for t in triggers[:10])
    shown = (
        f"{len(triggers)}" + (f": {ids}" if ids else "") + (", ..." if len(triggers) > 10 else "")
    )
    rows = [("triggers", shown) if key == "triggers" else (key, value) for key, value in rows]
    broker = settings.event_broker
    if broker is not None:
        rows.append(("event_broker", "seed-002 section, mapped onto bus and instance_id"))
        rows.append(("event_broker.enabled", _show(broker.enabled)))
        rows.append(("event_broker.provider", broker.provider))
        for name in ("redis", "nats", "database"):
            section = getattr(broker, name)
            if section is not None:
                rows += [row for row in _rows(section, f"event_broker.{name}.") if row[1] != "-"]
    return rows


def checked_triggers(settings: Settings, path: Path | str | None = None) -> list[Trigger]:
    """``settings.triggers`` parsed (config, the ground floor, cannot); a bad definition
    fails naming the file, the field's path and, for a condition, a caret at the position."""
    try:
        return parse_triggers(settings.triggers)
    except TriggerError as exc:
        where = f"{path}: " if path else ""
        excerpt = "".join(f"\n    {line}" for line in exc.excerpt.splitlines())
        fail(f"{where}{exc}{excerpt}")


@config_app.command("check")
def config_check(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(
            help=f"YAML file to check (default: --config, else ${CONFIG_ENV}).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the effective settings as JSON.")
    ] = False,
) -> None:
    """Load and validate settings (file plus TIDINGS_* variables) and show the result."""
    settings = settings_from(ctx, file)
    state = ctx.find_object(CliState)
    path = file or (state.config if state else None)
    triggers = checked_triggers(settings, path)
    if as_json:
        encoded = msgspec.json.encode(settings.to_builtins())
        typer.echo(msgspec.json.format(encoded, indent=2).decode())
        return
    out = _out()
    out.print(f"{path or 'settings (no config file)'}: OK", style="green", markup=False)
    rows = _summary(settings.redacted(), triggers)
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        out.print(f"  {key:<{width}}  {value}", markup=False)


# --- tidings migrate --------------------------------------------------------------------


@app.command("migrate")
def migrate_command(
    url: Annotated[
        str,
        typer.Argument(
            help="Store URL: postgresql://user@host:5432/db or sqlite:///events.db.",
            show_default=False,
        ),
    ],
    partition: Annotated[
        str | None,
        typer.Option(
            "--partition",
            help="PostgreSQL: create events partitioned by recorded_at (day, week or month); "
            "only when the table is created.",
            show_default=False,
        ),
    ] = None,
    seed_notify: Annotated[
        bool | None,
        typer.Option(
            "--seed-notify/--no-seed-notify",
            help="PostgreSQL: switch seed 001's per-row new_event trigger on or off "
            "(default: leave it; a fresh schema ships it on).",
            show_default=False,
        ),
    ] = None,
    transport_schemas: Annotated[
        list[str] | None,
        typer.Option(
            "--transport-schema",
            help="PostgreSQL: also create or update the PostgreSQL transport's tables in this "
            "schema (its ?schema=, e.g. tidings_queue); the transport does it on start anyway.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the database.")
    ] = 5.0,
) -> None:
    """Create or update every table tidings keeps in the database: the event store, the webhook
    queue, ... (idempotent: a second run applies nothing). See docs/migrations.md."""
    from tidings.store import redact_url  # noqa: PLC0415 - keep `tidings --help` fast
    from tidings.store.base import StoreError  # noqa: PLC0415

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    try:
        if scheme in ("postgresql", "postgres"):
            try:
                from tidings.store.migrate import apply_migrations  # noqa: PLC0415
            except ImportError as exc:
                fail(
                    f"PostgreSQL needs a client library that is not installed ({exc.name}); "
                    "run: pip install 'tidings[postgres]'"
                )
            applied = apply_migrations(
                url, partition=partition, seed_notify=seed_notify, connect_timeout=timeout
            )
            for schema in transport_schemas or ():
                applied += apply_migrations(
                    url, ("transport_postgres",), schema=schema, connect_timeout=timeout
                )
        elif scheme == "sqlite":
            if partition is not None or seed_notify is not None or transport_schemas:
                fail("--partition, --seed-notify and --transport-schema apply to PostgreSQL only")
            from tidings.store.sqlite import apply_migrations as sqlite_migrate  # noqa: PLC0415

            applied = sqlite_migrate(url)
        else:
            fail(
                f"tidings migrate: expected a postgresql:// or sqlite:/// URL, got "
                f"{redact_url(url)!r}"
            )
    except StoreError as exc:
        fail(str(exc))
    out = _out()
    where = redact_url(url)
    if not applied:
        out.print(f"{where}: up to date, nothing to apply", markup=False)
    for m in applied:
        out.print(f"applied {m.version} ({m.component})", style="green", markup=False)
    if applied:
        out.print(f"{where}: {len(applied)} migration(s) applied", markup=False)
    if seed_notify is not None:
        state = "on" if seed_notify else "off"
        out.print(f"seed 001 trigger notify_new_event: {state}", markup=False)


# --- tidings serve, dlq, replay ---------------------------------------------------------


def _config_path(ctx: typer.Context) -> Path | None:
    state = ctx.find_object(CliState)
    if state is not None and state.config is not None:
        return state.config
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else None


@contextmanager
def _queue(ctx: typer.Context) -> Iterator[Any]:
    """The delivery queue of the configured store, for commands that work without a server."""
    from tidings.store import open_store  # noqa: PLC0415
    from tidings.store.base import StoreError  # noqa: PLC0415
    from tidings.webhooks.queue import DeliveryQueue  # noqa: PLC0415

    settings = settings_from(ctx)
    url = settings.store.url
    if url.startswith("sqlite:"):
        from tidings.store.sqlite import path_of  # noqa: PLC0415

        path = path_of(url)
        if path != ":memory:" and not Path(path).exists():
            fail(
                f"no store at {path!r} (store.url {redact(url)}); run this where "
                "`tidings serve` runs, or pass its config with --config"
            )
    try:
        store = open_store(url)
    except StoreError as exc:
        fail(str(exc))
    try:
        try:
            queue = DeliveryQueue(store)  # type: ignore[arg-type]
        except (StoreError, TypeError) as exc:
            fail(str(exc))
        try:
            yield queue
        finally:
            queue.close()
    finally:
        store.close()


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

    from tidings.server.app import create_app  # noqa: PLC0415
    from tidings.server.service import Service  # noqa: PLC0415
    from tidings.store.base import StoreError  # noqa: PLC0415
    from tidings.transport import TransportError  # noqa: PLC0415

    settings = settings_from(ctx)
    server = settings.server
    if host is not None or port is not None:
        server = msgspec.structs.replace(
            server, host=host or server.host, port=port if port is not None else server.port
        )
        settings = msgspec.structs.replace(settings, server=server)
    if not _is_loopback(server.host) and not server.api_key:
        fail(
            f"serve: listening on {server.host} (beyond loopback) needs an API key; set "
            "server.api_key in the config or TIDINGS_SERVER__API_KEY"
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
        config = uvicorn.Config(
            create_app(service),
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
        uvicorn.Server(config).run(sockets=[sock])
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


dlq_app = typer.Typer(help="Dead webhook deliveries: list and retry.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="Only this endpoint id.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List dead deliveries, newest first."""
    from rich.table import Table  # noqa: PLC0415

    with _queue(ctx) as queue:
        rows = queue.deliveries(endpoint_id=endpoint, state="dead", limit=limit)
    out = _out()
    if as_json:
        for d in rows:
            out.print(
                msgspec.json.encode(
                    {
                        "id": d.id,
                        "endpoint_id": d.endpoint_id,
                        "event_id": d.event_id,
                        "attempts": d.attempts,
                        "last_status": d.last_status,
                        "last_error": d.last_error,
                        "updated_at": d.updated_at,
                    }
                ).decode(),
                markup=False,
            )
        return
    if not rows:
        out.print("no dead deliveries", markup=False)
        return
    # Ids are printed whole, to be copied into `dlq retry`: a table when the terminal is wide
    # enough for both ids and a readable error, else one record per delivery.
    widths = [max(len(getattr(d, name)) for d in rows) for name in ("id", "event_id")]
    endpoint_width = max(len(d.endpoint_id) for d in rows)
    if out.width >= sum(widths) + endpoint_width + len("attempts") + 20 + 16:
        table = Table()
        table.add_column("delivery", no_wrap=True, min_width=widths[0])
        table.add_column("endpoint", overflow="fold")
        table.add_column("event", no_wrap=True, min_width=widths[1])
        table.add_column("attempts")
        table.add_column("last error", overflow="fold")
        for d in rows:
            error = (d.last_error or "")[:80]
            table.add_row(d.id, d.endpoint_id, d.event_id, str(d.attempts), error)
        out.print(table)
        return
    for d in rows:
        out.print(f"{d.id}  endpoint {d.endpoint_id}  attempts {d.attempts}", markup=False)
        out.print(f"  event {d.event_id}", markup=False)
        if d.last_error:
            out.print(f"  last error: {d.last_error[:200]}", markup=False, soft_wrap=False)


@dlq_app.command("retry")
def dlq_retry(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, typer.Argument(help="Delivery ids to retry.")] = None,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="Retry every dead delivery of this endpoint.")
    ] = None,
    all_dead: Annotated[
        bool, typer.Option("--all", help="Retry every dead delivery of every endpoint.")
    ] = False,
) -> None:
    """Send dead deliveries again (same message id, a fresh retry budget)."""
    if not ids and endpoint is None and not all_dead:
        fail("dlq retry: name delivery ids, or --endpoint ID, or --all")
    if all_dead and endpoint is not None:
        fail(
            f"dlq retry: --all retries the dead deliveries of every endpoint, --endpoint "
            f"{endpoint} only that endpoint's; give one of them"
        )
    with _queue(ctx) as queue:
        count = 0
        missing = []
        for delivery_id in ids or []:
            if queue.retry(delivery_id):
                count += 1
            else:
                missing.append(delivery_id)
        if endpoint is not None or all_dead:
            count += queue.retry_dead(endpoint)
    if count or not missing:  # nothing queued because nothing was found: only the error
        _out().print(f"{count} deliveries queued again", markup=False)
    if missing:
        fail(f"no such delivery: {', '.join(missing)}; list dead ones with `tidings dlq list`")


REPLAY_POLL = 0.5  # seconds between looks at the queue while a replay waits for room


@app.command("replay")
def replay_command(
    ctx: typer.Context,
    since: Annotated[
        str, typer.Option("--since", help="Replay events recorded from this time (ISO 8601).")
    ],
    until: Annotated[str | None, typer.Option("--until", help="Up to this time.")] = None,
    types: Annotated[
        list[str] | None, typer.Option("--type", help="Event type or pattern (repeatable).")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print how many deliveries each endpoint would get; create none."
        ),
    ] = False,
) -> None:
    """Deliver stored events again to every endpoint they match (new deliveries).

    The queue's bound holds: a replay fills it to 80% of events.queue_size at most (the rest is
    kept for live events) and waits, with its progress shown, while `tidings serve` drains it.
    """
    from datetime import UTC, datetime  # noqa: PLC0415

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn  # noqa: PLC0415

    from tidings.store.base import Criteria  # noqa: PLC0415
    from tidings.webhooks.queue import REPLAY_SHARE, replay_bound  # noqa: PLC0415
    from tidings.webhooks.worker import Router  # noqa: PLC0415

    def when(text: str | None, name: str) -> datetime | None:
        if text is None:
            return None
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            fail(f"{name}: expected an ISO 8601 time like 2026-01-15T10:30:00Z, got {text!r}")
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    with user_errors():
        criteria = Criteria(
            types=tuple(types or ()), since=when(since, "--since"), until=when(until, "--until")
        )
    size = settings_from(ctx).events.queue_size
    bound = replay_bound(size)
    out = _out()
    with _queue(ctx) as queue:
        router = Router(queue.endpoints())
        total = queue.store.count(criteria) if hasattr(queue.store, "count") else None
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            console=_err(),
            transient=True,
        )
        with progress:
            task = progress.add_task("counting" if dry_run else "replaying", total=total)

            def advance(read: int) -> None:
                progress.update(task, completed=read, description="replaying")

            if dry_run:
                plan = queue.plan_redeliver(criteria, router, progress=advance)
            else:
                waiting = False

                def wait(open_now: int, most: int) -> bool:
                    nonlocal waiting
                    if not waiting:
                        progress.console.print(
                            f"the webhook queue holds {open_now} open deliveries; a replay fills "
                            f"it to {most} ({REPLAY_SHARE:.0%} of events.queue_size={size}): "
                            "waiting for `tidings serve` to deliver some",
                            markup=False,
                        )
                    waiting = True
                    progress.update(task, description=f"waiting for room ({open_now}/{most})")
                    time.sleep(REPLAY_POLL)
                    return True

                try:
                    count = queue.redeliver(
                        criteria,
                        router,
                        progress=advance,
                        batch=max(1, min(1000, bound // 4)),  # pages well inside the room
                        max_pending=bound,
                        wait=wait,
                    )
                except KeyboardInterrupt:
                    fail("replay interrupted; the deliveries created so far stay queued", 130)
    if dry_run:
        would = sum(plan.values())
        out.print(f"dry run: {would} deliveries would be created, none were", markup=False)
        width = max((len(ep) for ep in plan), default=0)
        for ep, n in sorted(plan.items()):
            out.print(f"  {ep:<{width}}  {n}", markup=False)
        return
    out.print(f"{count} deliveries created", markup=False)


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point: user errors end as one red line and exit status 2."""
    try:
        app(args=None if args is None else list(args), prog_name="tidings")
    except USER_ERRORS as exc:
        _print_error(str(exc))
        sys.exit(EXIT_USER_ERROR)
