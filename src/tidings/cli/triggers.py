"""``tidings triggers list|replay|backfill``: the triggers, and stored events run through them
again, against the configured store and job queue (``processor.queue``), without a server.

Replay and backfill enqueue through the processor's own matching step, keyed
``event:trigger:index``; the queue ignores a key it has seen, so running either twice (or over
events the processor already handled) enqueues nothing new, and says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer

from tidings.cli.app import (
    _config_path,
    _out,
    app,
    existing_store,
    fail,
    parse_time,
    progress_bar,
    settings_from,
    user_errors,
)

if TYPE_CHECKING:
    from tidings.triggers.backfill import Backfill
    from tidings.triggers.index import TriggerIndex
    from tidings.triggers.jobs import JobQueue
    from tidings.triggers.saved import SavedTriggers

EXAMPLES = """

Examples:

  tidings triggers list

  tidings triggers replay --since 2026-01-15T00:00:00Z --trigger big-orders

  tidings triggers backfill --from 0 --until 2026-01-16T00:00:00Z --trigger big-orders
"""

triggers_app = typer.Typer(
    help="Triggers: list them; run stored events through them again (replay, backfill)." + EXAMPLES,
    no_args_is_help=True,
)
app.add_typer(triggers_app, name="triggers")


@dataclass(slots=True)
class _Parts:
    store: Any
    index: TriggerIndex
    saved: SavedTriggers | None
    config_ids: frozenset[str]
    queue_url: str


@contextmanager
def _parts(ctx: typer.Context) -> Iterator[_Parts]:
    """The configured store, the triggers (config file + saved) and the queue's URL."""
    from tidings.cli.config import checked_triggers  # noqa: PLC0415
    from tidings.store.base import StoreError  # noqa: PLC0415
    from tidings.triggers.saved import SavedTriggers, TriggerCatalog  # noqa: PLC0415

    settings = settings_from(ctx)
    config_triggers = checked_triggers(settings, _config_path(ctx))
    url = settings.store.url
    store = existing_store(url)
    saved = None
    try:
        if url.startswith(("sqlite:", "postgresql:", "postgres:")):
            try:
                saved = SavedTriggers(url, config_ids={t.id for t in config_triggers})
            except StoreError as exc:
                fail(str(exc))
        index = TriggerCatalog(config_triggers, saved).index
        yield _Parts(
            store, index, saved, frozenset(t.id for t in config_triggers), settings.processor.queue
        )
    finally:
        if saved is not None:
            saved.close()
        store.close()


@triggers_app.command("list")
def triggers_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List every trigger (config file and saved through the API), by id.

    Example: tidings triggers list --json
    """
    with _parts(ctx) as parts:
        triggers = sorted(parts.index, key=lambda t: t.id)
        config_ids = parts.config_ids
    out = _out()
    if as_json:
        from tidings.config.triggers import redact_triggers  # noqa: PLC0415
        from tidings.triggers.definitions import trigger_to_dict  # noqa: PLC0415

        for trigger in triggers:
            view = redact_triggers([trigger_to_dict(trigger)])[0]
            view["source"] = "config" if trigger.id in config_ids else "api"
            out.print(msgspec.json.encode(view).decode(), markup=False, soft_wrap=True)
        return
    if not triggers:
        out.print("no triggers (define them under triggers: or POST /triggers)", markup=False)
        return
    from rich.table import Table  # noqa: PLC0415

    table = Table()
    for column in ("id", "source", "enabled", "pattern", "condition", "actions"):
        table.add_column(column, overflow="fold")
    for t in triggers:
        table.add_row(
            t.id,
            "config" if t.id in config_ids else "api",
            "yes" if t.enabled else "no",
            t.pattern,
            t.condition.text if t.condition is not None else "",
            ", ".join(a.name or a.type for a in t.actions),
        )
    out.print(table)


def _run(
    ctx: typer.Context,
    what: str,
    criteria_kw: dict[str, Any],
    trigger_ids: list[str] | None,
    until_position: int | None,
    batch: int,
) -> None:

    from tidings.store.base import Criteria  # noqa: PLC0415
    from tidings.triggers.backfill import backfill, check_triggers  # noqa: PLC0415
    from tidings.triggers.jobs import open_job_queue  # noqa: PLC0415

    with user_errors():
        criteria = Criteria(**criteria_kw)
    with _parts(ctx) as parts:
        only = None
        if trigger_ids:
            try:
                only = check_triggers(parts.index, trigger_ids)
            except ValueError as exc:
                fail(str(exc))
        elif not any(t.enabled for t in parts.index):
            fail("no enabled triggers: nothing would match (tidings triggers list shows them)")
        try:
            queue: JobQueue = open_job_queue(parts.queue_url, parts.store.url)
        except ValueError as exc:
            fail(str(exc))
        counter = getattr(parts.store, "count", None)
        total = counter(criteria) if callable(counter) else None
        progress = progress_bar()

        async def go() -> Backfill:
            try:
                with progress:
                    task = progress.add_task(what, total=total)

                    def advance(report: Backfill) -> None:
                        progress.update(task, completed=report.events)

                    return await backfill(
                        parts.store,
                        parts.index,
                        queue,
                        criteria,
                        only=only,
                        until_position=until_position,
                        batch=batch,
                        progress=advance,
                    )
            finally:
                await queue.close()

        try:
            report = asyncio.run(go())
        except KeyboardInterrupt:
            fail(f"{what} interrupted; the jobs enqueued so far stay queued", 130)
    out = _out()
    out.print(
        f"{what}: {report.events} events read, {report.matched} matched, {report.enqueued} "
        f"jobs enqueued, {report.duplicates} already queued or done (skipped), "
        f"{report.condition_errors} condition errors; last position {report.last_position}",
        markup=False,
    )
    for error in report.errors:
        out.print(f"  condition error: {error}", markup=False)


TRIGGER_HELP = "Only this trigger id (repeatable)."
BATCH = Annotated[int, typer.Option("--batch", min=1, max=10_000, help="Events per page.")]


@triggers_app.command("replay")
def triggers_replay(
    ctx: typer.Context,
    since: Annotated[
        str, typer.Option("--since", help="Events whose time is at or after this (ISO 8601).")
    ],
    until: Annotated[str | None, typer.Option("--until", help="Up to this time.")] = None,
    trigger: Annotated[list[str] | None, typer.Option("--trigger", help=TRIGGER_HELP)] = None,
    batch: BATCH = 500,
) -> None:
    """Run events since a time through the enabled triggers again (or --trigger ones).

    Jobs are keyed event:trigger:index, so an action that already ran or is queued is skipped.

    Example: tidings triggers replay --since 2026-01-15T00:00:00Z --trigger big-orders
    """
    kw = {"since": parse_time(since, "--since"), "until": parse_time(until, "--until")}
    _run(ctx, "replay", kw, trigger, None, batch)


@triggers_app.command("backfill")
def triggers_backfill(
    ctx: typer.Context,
    trigger: Annotated[list[str], typer.Option("--trigger", help="Trigger id (repeatable).")],
    start: Annotated[
        int | None,
        typer.Option("--from", min=0, help="Events after this store position (0: all)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Events whose time is at or after this (ISO 8601)."),
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this time.")] = None,
    to: Annotated[
        int | None, typer.Option("--to", min=1, help="Up to this store position (inclusive).")
    ] = None,
    types: Annotated[
        list[str] | None, typer.Option("--type", help="Event type or pattern (repeatable).")
    ] = None,
    batch: BATCH = 500,
) -> None:
    """Run historical events through chosen triggers (--trigger, required).

    Start at a store position (--from) or an event time (--since); idempotent by the jobs'
    keys: a second run enqueues nothing new.

    Example: tidings triggers backfill --from 0 --to 5000 --trigger big-orders
    """
    if start is None and since is None:
        fail("give where to start: --from POSITION (0 for the beginning) or --since TIME")
    if start is not None and since is not None:
        fail("give --from or --since, not both")
    kw: dict[str, Any] = {
        "after_position": start or 0,
        "since": parse_time(since, "--since"),
        "until": parse_time(until, "--until"),
        "types": tuple(types or ()),
    }
    _run(ctx, "backfill", kw, trigger, to, batch)
