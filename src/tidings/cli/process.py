"""``tidings process``: the trigger processor and the action workers alone, without the HTTP API."""

import asyncio
import sys
from typing import Annotated

import typer

from tidings.cli.app import _config_path, _out, app, fail, settings_from
from tidings.urls import redact_url


@app.command("process")
def process_command(
    ctx: typer.Context,
    log_level: Annotated[str, typer.Option("--log-level", help="Log level.")] = "info",
    poll_interval: Annotated[
        float | None,
        typer.Option(
            "--poll-interval",
            min=0.001,
            help="Seconds between looks at the store when nothing woke the processor "
            "(PostgreSQL wakes it by LISTEN; default 0.1).",
        ),
    ] = None,
    action_timeout: Annotated[
        float,
        typer.Option(
            "--action-timeout",
            min=0.1,
            help="Seconds an action may run per attempt; a job whose process died is run "
            "again by another after twice that.",
        ),
    ] = 30.0,
) -> None:
    """Run the triggers: follow the store, enqueue matched actions, run them.

    The config file's triggers and the ones saved through `tidings serve`'s API (a change is
    applied to every event stored after it), with the processor and workers serve runs; run one
    `tidings process` per machine to scale out (processor.partitions > 1 on PostgreSQL shares
    the partitions by leases). SIGTERM or Ctrl-C stops it after the actions in flight.

    Example: tidings --config tidings.yaml process --log-level warning
    """
    import logging  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from tidings.cli.config import checked_triggers  # noqa: PLC0415
    from tidings.store import open_store  # noqa: PLC0415
    from tidings.store.base import StoreError  # noqa: PLC0415
    from tidings.triggers.saved import open_catalog  # noqa: PLC0415
    from tidings.triggers.service import TriggerService  # noqa: PLC0415

    settings = settings_from(ctx)
    triggers = checked_triggers(settings, _config_path(ctx))
    try:  # the config file's triggers and the ones saved through the API, as serve runs them
        catalog = open_catalog(triggers, settings.store.url)
    except (StoreError, ValueError) as exc:
        fail(f"process: {exc}")
    index = catalog.index
    if not index.all():
        catalog.close()
        fail(
            "process: no triggers configured or saved; add a `triggers:` list to the config "
            "or save one through the API (see docs/triggers.md)"
        )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def run() -> None:
        try:
            store = open_store(settings.store.url)
        except (StoreError, ValueError) as exc:
            fail(f"process: {exc}")
        try:
            try:
                service = TriggerService.from_settings(
                    settings,
                    store,
                    index_source=catalog,
                    poll_interval=poll_interval,
                    action_timeout=action_timeout,
                )
            except (StoreError, ValueError) as exc:
                fail(f"process: {exc}")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await service.start()
            proc = settings.processor
            _out().print(
                f"tidings process: {len(index)} trigger(s) · store "
                f"{redact_url(settings.store.url)} · queue {redact_url(proc.queue)} · "
                f"partitions {service.processor.owned or '(by lease)'} of {proc.partitions} · "
                f"{proc.workers} workers",
                markup=False,
            )
            sys.stdout.flush()
            await stop.wait()
            handed_back = await service.stop(drain=True)
            if handed_back:
                _out().print(f"stopped: {len(handed_back)} action(s) handed back to the queue")
        finally:
            catalog.close()
            store.close()

    asyncio.run(run())
