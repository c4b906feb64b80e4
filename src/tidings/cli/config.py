"""``tidings config check``: load and validate settings and show the effective values."""

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from tidings.cli.app import CliState, _out, app, settings_from
from tidings.config import CONFIG_ENV, Duration, Settings

config_app = typer.Typer(help="Check configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


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


def _summary(settings: Settings) -> list[tuple[str, str]]:
    rows = [
        row
        for row in _rows(msgspec.structs.replace(settings, event_broker=None))
        if row[0] != "event_broker"
    ]
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
    if as_json:
        encoded = msgspec.json.encode(settings.to_builtins())
        typer.echo(msgspec.json.format(encoded, indent=2).decode())
        return
    state = ctx.find_object(CliState)
    path = file or (state.config if state else None)
    out = _out()
    out.print(f"{path or 'settings (no config file)'}: OK", style="green", markup=False)
    rows = _summary(settings.redacted())
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        out.print(f"  {key:<{width}}  {value}", markup=False)
