"""``tidings replay``: deliver stored events again to the endpoints they match."""

import time
from typing import Annotated

import typer

from tidings.cli.app import (
    _out,
    _queue,
    app,
    fail,
    parse_time,
    progress_bar,
    settings_from,
    user_errors,
)

REPLAY_POLL = 0.5  # seconds between looks at the queue while a replay waits for room


@app.command("replay")
def replay_command(
    ctx: typer.Context,
    since: Annotated[
        str, typer.Option("--since", help="Replay events recorded from this time (ISO 8601).")
    ],
    until: Annotated[str | None, typer.Option("--until", help="Up to this time.")] = None,
    types: Annotated[
        list[str] | None, typer.Option("--type", help="Event type or pattern (repeatable).")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print how many deliveries each endpoint would get; create none."
        ),
    ] = False,
) -> None:
    """Deliver stored events again to every endpoint they match (new deliveries).

    The queue's bound holds: a replay fills it to 80% of events.queue_size at most (the rest is
    kept for live events) and waits, with its progress shown, while `tidings serve` drains it.
    """

    from tidings.store.base import Criteria  # noqa: PLC0415
    from tidings.webhooks.queue import REPLAY_SHARE, replay_bound  # noqa: PLC0415
    from tidings.webhooks.worker import Router  # noqa: PLC0415

    with user_errors():
        criteria = Criteria(
            types=tuple(types or ()),
            since=parse_time(since, "--since"),
            until=parse_time(until, "--until"),
        )
    size = settings_from(ctx).events.queue_size
    bound = replay_bound(size)
    out = _out()
    with _queue(ctx) as queue:
        router = Router(queue.endpoints())
        total = queue.store.count(criteria) if hasattr(queue.store, "count") else None
        progress = progress_bar()
        with progress:
            task = progress.add_task("counting" if dry_run else "replaying", total=total)

            def advance(read: int) -> None:
                progress.update(task, completed=read, description="replaying")

            if dry_run:
                plan = queue.plan_redeliver(criteria, router, progress=advance)
            else:
                waiting = False

                def wait(open_now: int, most: int) -> bool:
                    nonlocal waiting
                    if not waiting:
                        progress.console.print(
                            f"the webhook queue holds {open_now} open deliveries; a replay fills "
                            f"it to {most} ({REPLAY_SHARE:.0%} of events.queue_size={size}): "
                            "waiting for `tidings serve` to deliver some",
                            markup=False,
                        )
                    waiting = True
                    progress.update(task, description=f"waiting for room ({open_now}/{most})")
                    time.sleep(REPLAY_POLL)
                    return True

                try:
                    count = queue.redeliver(
                        criteria,
                        router,
                        progress=advance,
                        batch=max(1, min(1000, bound // 4)),  # pages well inside the room
                        max_pending=bound,
                        wait=wait,
                    )
                except KeyboardInterrupt:
                    fail("replay interrupted; the deliveries created so far stay queued", 130)
    if dry_run:
        would = sum(plan.values())
        out.print(f"dry run: {would} deliveries would be created, none were", markup=False)
        width = max((len(ep) for ep in plan), default=0)
        for ep, n in sorted(plan.items()):
            out.print(f"  {ep:<{width}}  {n}", markup=False)
        return
    out.print(f"{count} deliveries created", markup=False)
