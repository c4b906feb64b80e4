"""``tidings events show ID``: one stored event, with its deliveries, from a running server."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from tidings.cli.app import _out, app
from tidings.cli.client import ApiKeyOption, UrlOption, client_from, quote
from tidings.cli.deliveries import JsonOption, delivery_line
from tidings.cli.tail import event_line

events_app = typer.Typer(help="Stored events of a running server.", no_args_is_help=True)
app.add_typer(events_app, name="events")


@events_app.command(
    "show",
    epilog=(
        "Examples:\n\n  tidings events show 42                 # by store position\n\n"
        "  tidings events show 0193b7c0-...       # by event id\n\n"
        "  tidings events show 42 --json | jq .event.data"
    ),
)
def show_event(
    ctx: typer.Context,
    event: Annotated[str, typer.Argument(metavar="ID", help="Event id or store position.")],
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """An event's envelope and data, and its deliveries."""
    client = client_from(ctx, url, api_key)
    item = client.call("GET", f"/events/{quote(event)}")
    event_id = item["event"]["id"]
    page = client.call("GET", f"/deliveries?event_id={quote(event_id)}&limit=1000")
    out = _out()
    if as_json:
        out.print(json.dumps({**item, "deliveries": page["deliveries"]}), markup=False)
        return
    out.print(event_line(item, out.width), soft_wrap=True)
    out.print(json.dumps(item["event"], indent=2, ensure_ascii=False), markup=False)
    if item.get("stream"):
        out.print(f"stream {item['stream']} version {item['version']}", markup=False)
    rows = page["deliveries"]
    out.print(f"{len(rows)} deliveries" if rows else "no deliveries", markup=False)
    for d in rows:
        out.print(delivery_line(d), soft_wrap=True)
