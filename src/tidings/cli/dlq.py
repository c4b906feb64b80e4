"""``tidings dlq list|retry``: dead webhook deliveries, without a server."""

from typing import Annotated

import msgspec
import typer

from tidings.cli.app import _out, _queue, app, fail

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
