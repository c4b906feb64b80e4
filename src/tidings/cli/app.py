"""The typer app of the ``tidings`` command and the helpers every command group shares.

Adding a command: put it in its own module of this package (``tidings/cli/NAME.py``), decorate a
function with ``@app.command()`` or build a ``typer.Typer`` group and ``app.add_typer`` it as
``config`` does, and import the module in ``tidings/cli/__init__.py``. Read settings with
``settings_from(ctx)`` and wrap the body in ``with user_errors():`` so that a user mistake prints
one red line and exits 2 instead of a traceback. ``main`` catches the same errors again as a last
resort.
"""

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

import tidings
from tidings.config import CONFIG_ENV, ConfigError, Settings, load
from tidings.event import EventError
from tidings.topics import PatternError
from tidings.urls import redact_url as redact

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "USER_ERRORS",
    "CliState",
    "app",
    "fail",
    "main",
    "settings_from",
    "user_errors",
]


# Exceptions that mean "the input is wrong", not "tidings is broken": shown without a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, EventError, PatternError)
# Exit statuses (docs/cli.md): 0 done, 1 failed (a server or store away, a 5xx), 2 the input
# was wrong (an option, an argument, a refusal of the server), 130 interrupted (Ctrl-C).
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="tidings",
    help="Emit, keep, move, deliver and react to events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold secrets from the config
)


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


def _config_path(ctx: typer.Context) -> Path | None:
    state = ctx.find_object(CliState)
    if state is not None and state.config is not None:
        return state.config
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else None


def parse_time(text: str | None, name: str) -> datetime | None:
    """An option's ISO 8601 time (``Z`` or an offset; none given means UTC), or exit 2."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{name}: expected an ISO 8601 time like 2026-01-15T10:30:00Z, got {text!r}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def progress_bar(*, disable: bool = False) -> Any:
    """The bar every long command shows on stderr (stdout stays for results and ``--json``):
    the task's description, the bar, done/total events; gone when it finishes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn  # noqa: PLC0415

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        console=_err(),
        transient=True,
        disable=disable,
    )


def existing_store(url: str) -> Any:
    """The store at ``url`` for a command that works without a server: a SQLite file that
    does not exist is a mistake (a wrong directory or config), not a new store to create."""
    from tidings.store import open_store  # noqa: PLC0415
    from tidings.store.base import StoreError  # noqa: PLC0415

    if url.startswith("sqlite:"):
        from tidings.store.sqlite import path_of  # noqa: PLC0415

        path = path_of(url)
        if path != ":memory:" and not Path(path).exists():
            fail(
                f"no store at {path!r} (store.url {redact(url)}); run this where "
                "`tidings serve` runs, or pass its config with --config"
            )
    try:
        return open_store(url)
    except StoreError as exc:
        fail(str(exc))


@contextmanager
def _queue(ctx: typer.Context) -> Iterator[Any]:
    """The delivery queue of the configured store, for commands that work without a server."""
    from tidings.store.base import StoreError  # noqa: PLC0415
    from tidings.webhooks.queue import DeliveryQueue  # noqa: PLC0415

    store = existing_store(settings_from(ctx).store.url)
    try:
        try:
            queue = DeliveryQueue(store)
        except (StoreError, TypeError) as exc:
            fail(str(exc))
        try:
            yield queue
        finally:
            queue.close()
    finally:
        store.close()


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point: user errors end as one red line and exit status 2."""
    try:
        app(args=None if args is None else list(args), prog_name="tidings")
    except USER_ERRORS as exc:
        _print_error(str(exc))
        sys.exit(EXIT_USER_ERROR)
