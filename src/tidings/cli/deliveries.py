"""``tidings deliveries show ID``: one webhook delivery with its attempts, from a running
server."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.text import Text

from tidings.cli.app import _out, app
from tidings.cli.client import ApiKeyOption, UrlOption, client_from, quote

__all__ = ["JsonOption", "delivery_line"]

deliveries_app = typer.Typer(help="Webhook deliveries of a running server.", no_args_is_help=True)
app.add_typer(deliveries_app, name="deliveries")

JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer.")]


def delivery_line(d: dict[str, Any]) -> Text:
    style = {"delivered": "green", "dead": "red", "pending": "yellow"}.get(d["state"], "")
    line = Text(f"  {d['id']}  ")
    line.append(f"{d['state']:<10}", style=style)
    line.append(f" {d['endpoint_id']}  attempts {d['attempts']}")
    if d.get("last_error"):
        line.append(f"  {d['last_error']}", style="dim")
    return line


@deliveries_app.command(
    "show",
    epilog="Examples:\n\n  tidings deliveries show dlv_0193...\n\n"
    "  tidings deliveries show dlv_0193... --json | jq .attempt_log",
)
def show_delivery(
    ctx: typer.Context,
    delivery: Annotated[str, typer.Argument(metavar="ID", help="The delivery's id.")],
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """A delivery: its state, endpoint, event, and every attempt (status, time, error)."""
    d = client_from(ctx, url, api_key).call("GET", f"/deliveries/{quote(delivery)}")
    out = _out()
    if as_json:
        out.print(json.dumps(d), markup=False)
        return
    out.print(delivery_line(d), soft_wrap=True)
    out.print(f"  event {d['event_id']}  created {d['created_at']}", markup=False)
    for a in d.get("attempt_log", []):
        status = a.get("status_code") or a.get("error") or "-"
        took = a.get("duration")
        took_text = f"{took * 1000:.0f} ms" if isinstance(took, int | float) else ""
        line = f"  attempt {a['number']}  {a['started_at']}  {status}  {took_text}"
        out.print(line, markup=False)
