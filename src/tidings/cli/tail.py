"""``tidings tail [PATTERN...]``: watch events go by, live, one line each (or JSON lines).

Against a server it reads ``GET /events/stream`` (SSE) and, when the server cuts it off for
reading too slowly or restarts, resumes from the last id it printed, or from the head it
started at when none was printed yet (nothing is skipped). Against a store
URL (``--store``) it reads the store's log itself, no server needed.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from tidings.cli.app import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    _err,
    _out,
    app,
    existing_store,
    fail,
    user_errors,
)
from tidings.cli.client import ApiKeyOption, Unreachable, UrlOption, client_from

__all__ = ["event_line", "store_option"]

STORE_POLL = 0.2  # seconds between reads of a store's log when nothing was new
RECONNECT_FOR = 30.0  # seconds tail waits for a server that stopped or went away
_COLOURS = ("cyan", "green", "yellow", "magenta", "blue", "bright_red", "bright_green")

TAIL_EXAMPLES = """\
Examples:

  tidings tail                               # every new event, from the local server

  tidings tail 'order.*' --after 0           # order events, from the first one stored

  tidings tail --json --count 10 | jq .event.type

  tidings tail --store sqlite:///tidings.db 'payment.**'
"""


def event_line(item: dict[str, Any], width: int) -> Text:
    """One stored event (``{"position", "event", ...}``) as a coloured line."""
    event = item.get("event", {})
    kind = str(event.get("type", "?"))
    when = str(event.get("time", ""))[11:23]
    line = Text()
    line.append(f"{when:<12} ", style="dim")
    line.append(f"#{item.get('position', '?')} ", style="bold")
    line.append(kind, style=_COLOURS[zlib.crc32(kind.encode()) % len(_COLOURS)])
    line.append(f"  {event.get('id', '')}", style="dim")
    if event.get("data") is not None:
        data = json.dumps(event["data"], separators=(",", ":"), ensure_ascii=False)
        room = max(10, width - len(line.plain) - 2)
        line.append("  " + (data if len(data) <= room else data[: room - 1] + "…"))
    return line


@app.command("tail", epilog=TAIL_EXAMPLES)
def tail_command(
    ctx: typer.Context,
    patterns: Annotated[
        list[str] | None,
        typer.Argument(help="Event types or glob patterns (`order.*`, `**`); default every one."),
    ] = None,
    after: Annotated[
        int | None,
        typer.Option("--after", min=0, help="Start after this store position (0: from the first)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (position, event, stream).")
    ] = False,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Stop after this many events.")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option("--store", help="Read this store URL directly instead of a server."),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Print events as they are stored, one line each, until Ctrl-C (or --count)."""
    from tidings.topics import compile_pattern  # noqa: PLC0415

    wanted = patterns or ["**"]
    with user_errors():
        for p in wanted:
            compile_pattern(p)
    out = _out()
    seen = 0
    try:
        source = (
            _from_store(store, wanted, after)
            if store is not None
            else _from_server(ctx, url, api_key, wanted, after)
        )
        for item in source:
            if as_json:
                out.print(json.dumps(item, separators=(",", ":")), markup=False, soft_wrap=True)
            else:
                out.print(event_line(item, out.width), soft_wrap=True)
            seen += 1
            if count is not None and seen >= count:
                return
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _from_server(
    ctx: typer.Context, url: str | None, key: str | None, patterns: list[str], after: int | None
) -> Iterator[dict[str, Any]]:
    """Events from the server's stream. A cut-off resumes at once; a server that stops or
    goes away is waited for (``RECONNECT_FOR`` seconds), then the stream resumes after the last
    event printed. A server never reached is an error at once.

    Without ``--after`` the start is the server's head when tail first connects, asked for
    before streaming and sent as ``?after=``: a reconnect before any event was printed then
    resumes from that moment instead of from the restarted server's head, which would skip
    the events stored while it was down."""
    client = client_from(ctx, url, key)
    if after is None:
        after = int(client.call("GET", "/subscriptions?limit=1")["head"])
    query = [("pattern", p) for p in patterns]
    query.append(("after", str(after)))
    path = "/events/stream?" + urllib.parse.urlencode(query)
    last: str | None = None
    opened = False
    down_since: float | None = None
    while True:
        why = "the server closed the stream"
        try:
            for msg in client.stream(path, last, patient=opened):
                if msg.event == "open":
                    opened, down_since = True, None
                    continue
                if msg.event == "error":
                    why = json.loads(msg.data).get("detail", msg.data)
                    break
                last = msg.id
                yield json.loads(msg.data)
        except Unreachable as exc:
            why = f"the server is not reachable: {exc}"
        if "too slow" in why:
            _note(f"the server cut the stream off ({why}); resuming after #{last}")
            continue
        now = time.monotonic()
        if down_since is None:
            down_since = now
            _note(f"{why}; reconnecting (for up to {RECONNECT_FOR:.0f} s)")
        elif now - down_since > RECONNECT_FOR:
            fail(f"{why}; gave up after {RECONNECT_FOR:.0f} s", EXIT_FAILURE)
        time.sleep(1.0)


def _from_store(url: str, patterns: list[str], after: int | None) -> Iterator[dict[str, Any]]:
    from tidings.server.browse import stored_event  # noqa: PLC0415
    from tidings.store.base import Criteria, StoreError  # noqa: PLC0415

    store = store_option(url)
    try:
        criteria = Criteria(types=tuple(patterns))
        position = store.head() if after is None else after
        while True:
            page = store.read_all(position, 1000)
            for rec in page:
                if criteria.matches(rec):
                    yield stored_event(rec)
            if page:
                position = page[-1].position
            if len(page) < 1000:
                time.sleep(STORE_POLL)
    except StoreError as exc:
        fail(f"the store failed: {exc}", EXIT_FAILURE)
    finally:
        store.close()


def _note(message: str) -> None:
    console: Console = _err()
    console.print(message, style="yellow", markup=False)


def store_option(url: str) -> Any:
    """The store of ``--store`` (a SQLite file must exist: a new one would hold nothing)."""
    try:
        return existing_store(url)
    except ValueError as exc:  # not a store URL at all
        fail(f"--store: {exc}")
