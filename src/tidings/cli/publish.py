"""``tidings publish TYPE --data JSON|@FILE``: store an event (or many) through a server or a
store.

``--data`` is the event's data as JSON, ``@FILE`` to read it from a file, ``@-`` from stdin. A
file of JSON lines (one value a line) publishes one event per line, in batches, with a progress
bar. Through a server the events take ``POST /events`` (webhooks fire as for any event);
``--store URL`` appends to a store directly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tidings.cli.app import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    _out,
    app,
    fail,
    progress_bar,
    user_errors,
)
from tidings.cli.client import ApiKeyOption, UrlOption, client_from

BATCH = 500  # events per request or append

PUBLISH_EXAMPLES = """\
Examples:

  tidings publish order.created --data '{"order_id": "o-1", "total": 9.5}'

  tidings publish order.created --data @order.json --subject o-1

  tidings publish audit.line --data @lines.jsonl       # one event per line, progress bar

  tidings publish ping --store sqlite:///tidings.db    # no server: straight into the store
"""


def read_data(spec: str | None) -> list[Any]:
    """The data of each event to publish: one JSON value, or one per line of a file."""
    if spec is None:
        return [None]
    if spec.startswith("@"):
        name = spec[1:]
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"--data: cannot read {name!r}: {exc.strerror or exc}")
        where = "stdin" if name == "-" else name
    else:
        text, where = spec, "--data"
    try:
        return [json.loads(text)]
    except ValueError as whole:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            fail(f"--data: {where} is not JSON: {whole}; quote it, e.g. '{{\"a\": 1}}'")
        values = []
        for n, line in enumerate(lines, 1):
            try:
                values.append(json.loads(line))
            except ValueError as exc:
                fail(f"--data: line {n} of {where} is not JSON: {exc}")
        return values


@app.command("publish", epilog=PUBLISH_EXAMPLES)
def publish_command(
    ctx: typer.Context,
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="The event type.")],
    data: Annotated[
        str | None,
        typer.Option("--data", "-d", help="Data as JSON, @FILE (JSON or JSON lines) or @-."),
    ] = None,
    source: Annotated[str | None, typer.Option("--source", help="CloudEvents source.")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="CloudEvents subject.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the ids (and positions) as JSON.")
    ] = False,
    store: Annotated[
        str | None, typer.Option("--store", help="Append to this store URL, not a server.")
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Publish events of TYPE: stored, and delivered to the webhooks that match."""

    from tidings.event import from_dict  # noqa: PLC0415

    values = read_data(data)
    extra = {k: v for k, v in (("source", source), ("subject", subject)) if v is not None}
    with user_errors():
        events = [from_dict({"type": event_type, **extra, "data": v}) for v in values]
    ids: list[str] = []
    positions: list[int] = []
    progress = progress_bar(disable=len(events) <= BATCH)
    try:
        with progress:
            task = progress.add_task("publishing", total=len(events))
            if store is not None:
                positions = _append(store, events, lambda n: progress.advance(task, n))
                ids = [e.id for e in events]
            else:
                client = client_from(ctx, url, api_key)
                for start in range(0, len(events), BATCH):
                    chunk = events[start : start + BATCH]
                    body = [json.loads(e.to_json()) for e in chunk]
                    answer = client.call("POST", "/events", body)
                    ids += answer["ids"]
                    progress.advance(task, len(chunk))
    except KeyboardInterrupt:
        fail(f"interrupted; {len(ids) or len(positions)} events were published", EXIT_INTERRUPTED)
    out = _out()
    if as_json:
        out.print(json.dumps({"ids": ids, "positions": positions or None}), markup=False)
    elif len(ids) == 1:
        where = f" at #{positions[0]}" if positions else ""
        out.print(f"published {event_type} {ids[0]}{where}", markup=False)
    else:
        out.print(f"published {len(ids)} {event_type} events", markup=False)


def _append(url: str, events: list[Any], advance: Any) -> list[int]:
    from tidings.cli.tail import store_option  # noqa: PLC0415
    from tidings.store.base import StoreError  # noqa: PLC0415

    store = store_option(url)
    try:
        positions: list[int] = []
        for start in range(0, len(events), BATCH):
            chunk = events[start : start + BATCH]
            positions += [r.position for r in store.append(chunk)]
            advance(len(chunk))
        return positions
    except StoreError as exc:
        fail(f"the store refused the events: {exc}", EXIT_FAILURE)
    finally:
        store.close()
