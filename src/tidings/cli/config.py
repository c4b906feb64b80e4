"""``tidings config check``: load and validate settings and show the effective values."""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from tidings.cli.app import CliState, _out, app, fail, settings_from
from tidings.config import CONFIG_ENV, Duration, Settings
from tidings.triggers.actions import action_types, validate_action
from tidings.triggers.definitions import Trigger, TriggerError, parse_triggers

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
    """``settings.triggers`` parsed (config, the ground floor, cannot), action types and options
    checked too; a bad definition fails naming the file, the field's path and, for a condition,
    a caret at the position."""
    try:
        return parse_triggers(
            settings.triggers, action_types=action_types(), validate_action=validate_action
        )
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
