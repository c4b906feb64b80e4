"""``tidings endpoints list|add|disable|enable|rotate-secret``: webhook endpoints, through the
server's API (an admin key for the changes)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from tidings.cli.app import _out, app
from tidings.cli.client import ApiKeyOption, Client, UrlOption, client_from, quote

endpoints_app = typer.Typer(
    help="Webhook endpoints of a running server: list, add, disable, enable, rotate-secret.",
    no_args_is_help=True,
)
app.add_typer(endpoints_app, name="endpoints")

JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer.")]


def _show(answer: Any, as_json: bool, text: str) -> None:
    out = _out()
    out.print(json.dumps(answer) if as_json else text, markup=False)


def _all(client: Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        more = f"&cursor={quote(cursor)}" if cursor else ""
        page = client.call("GET", "/endpoints?limit=1000" + more)
        found += page["endpoints"]
        cursor = page.get("next_cursor")
        if not cursor:
            return found


@endpoints_app.command(
    "list",
    epilog="Examples:\n\n  tidings endpoints list\n\n  tidings endpoints list --json | jq '.[].id'",
)
def list_endpoints(
    ctx: typer.Context, as_json: JsonOption = False, url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:  # fmt: skip
    """Every endpoint: id, state, the events it takes, its URL."""
    from rich.table import Table  # noqa: PLC0415

    eps = _all(client_from(ctx, url, api_key))
    out = _out()
    if as_json:
        out.print(json.dumps(eps), markup=False)
        return
    if not eps:
        out.print("no endpoints (add one with `tidings endpoints add URL`)", markup=False)
        return
    table = Table()
    for name in ("id", "state", "events", "url"):
        table.add_column(name, overflow="fold", no_wrap=name == "id")
    for ep in eps:
        state = "enabled" if ep.get("enabled", True) else "disabled"
        table.add_row(ep["id"], state, ", ".join(ep.get("events") or ["**"]), ep.get("url", ""))
    out.print(table)


@endpoints_app.command(
    "add",
    epilog=(
        "Examples:\n\n  tidings endpoints add https://example.com/hook --event 'order.*'\n\n"
        "  tidings endpoints add http://127.0.0.1:9000/hook --event '**' --json"
    ),
)
def add_endpoint(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="URL", help="Where to POST the events.")],
    events: Annotated[
        list[str] | None,
        typer.Option("--event", "-e", help="Event type or pattern it takes (repeatable)."),
    ] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Register an endpoint; prints its id and signing secret (shown this once)."""
    body: dict[str, Any] = {"url": target}
    if events:
        body["events"] = events
    ep = client_from(ctx, url, api_key).call("POST", "/endpoints", body)
    text = f"added {ep['id']} -> {ep['url']}\nsigning secret (shown once): {ep['secret']}"
    _show(ep, as_json, text)


def _action(ctx: typer.Context, endpoint_id: str, action: str, url: str | None,
            key: str | None) -> Any:  # fmt: skip
    return client_from(ctx, url, key).call("POST", f"/endpoints/{quote(endpoint_id)}/{action}")


IdArgument = Annotated[str, typer.Argument(metavar="ID", help="The endpoint's id.")]


@endpoints_app.command("disable", epilog="Example:\n\n  tidings endpoints disable ep_0193...")
def disable_endpoint(
    ctx: typer.Context, endpoint_id: IdArgument, as_json: JsonOption = False,
    url: UrlOption = None, api_key: ApiKeyOption = None,
) -> None:  # fmt: skip
    """Stop delivering to an endpoint (its deliveries wait)."""
    _show(_action(ctx, endpoint_id, "disable", url, api_key), as_json, f"disabled {endpoint_id}")


@endpoints_app.command("enable", epilog="Example:\n\n  tidings endpoints enable ep_0193...")
def enable_endpoint(
    ctx: typer.Context, endpoint_id: IdArgument, as_json: JsonOption = False,
    url: UrlOption = None, api_key: ApiKeyOption = None,
) -> None:  # fmt: skip
    """Deliver to an endpoint again."""
    _show(_action(ctx, endpoint_id, "enable", url, api_key), as_json, f"enabled {endpoint_id}")


@endpoints_app.command(
    "rotate-secret", epilog="Example:\n\n  tidings endpoints rotate-secret ep_0193..."
)
def rotate_secret(
    ctx: typer.Context, endpoint_id: IdArgument, as_json: JsonOption = False,
    url: UrlOption = None, api_key: ApiKeyOption = None,
) -> None:  # fmt: skip
    """A new signing secret (shown once); the previous one keeps signing alongside it."""
    answer = _action(ctx, endpoint_id, "rotate-secret", url, api_key)
    secret = answer.get("secret", "") if isinstance(answer, dict) else ""
    _show(answer, as_json, f"new signing secret for {endpoint_id} (shown once): {secret}")
