"""``tidings migrate``: create or update every table tidings keeps in a database."""

from typing import Annotated

import typer

from tidings.cli.app import _out, app, fail


@app.command("migrate")
def migrate_command(
    url: Annotated[
        str,
        typer.Argument(
            help="Store URL: postgresql://user@host:5432/db or sqlite:///events.db.",
            show_default=False,
        ),
    ],
    partition: Annotated[
        str | None,
        typer.Option(
            "--partition",
            help="PostgreSQL: create events partitioned by recorded_at (day, week or month); "
            "only when the table is created.",
            show_default=False,
        ),
    ] = None,
    seed_notify: Annotated[
        bool | None,
        typer.Option(
            "--seed-notify/--no-seed-notify",
            help="PostgreSQL: switch seed 001's per-row new_event trigger on or off "
            "(default: leave it; a fresh schema ships it on).",
            show_default=False,
        ),
    ] = None,
    transport_schemas: Annotated[
        list[str] | None,
        typer.Option(
            "--transport-schema",
            help="PostgreSQL: also create or update the PostgreSQL transport's tables in this "
            "schema (its ?schema=, e.g. tidings_queue); the transport does it on start anyway.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the database.")
    ] = 5.0,
) -> None:
    """Create or update every table tidings keeps in the database: the event store, the webhook
    queue, ... (idempotent: a second run applies nothing). See docs/migrations.md."""
    from tidings.store import redact_url  # noqa: PLC0415 - keep `tidings --help` fast
    from tidings.store.base import StoreError  # noqa: PLC0415

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    try:
        if scheme in ("postgresql", "postgres"):
            try:
                from tidings.store.migrate import apply_migrations  # noqa: PLC0415
            except ImportError as exc:
                fail(
                    f"PostgreSQL needs a client library that is not installed ({exc.name}); "
                    "run: pip install 'tidings[postgres]'"
                )
            applied = apply_migrations(
                url, partition=partition, seed_notify=seed_notify, connect_timeout=timeout
            )
            for schema in transport_schemas or ():
                applied += apply_migrations(
                    url, ("transport_postgres",), schema=schema, connect_timeout=timeout
                )
        elif scheme == "sqlite":
            if partition is not None or seed_notify is not None or transport_schemas:
                fail("--partition, --seed-notify and --transport-schema apply to PostgreSQL only")
            from tidings.store.sqlite import apply_migrations as sqlite_migrate  # noqa: PLC0415

            applied = sqlite_migrate(url)
        else:
            fail(
                f"tidings migrate: expected a postgresql:// or sqlite:/// URL, got "
                f"{redact_url(url)!r}"
            )
    except StoreError as exc:
        fail(str(exc))
    out = _out()
    where = redact_url(url)
    if not applied:
        out.print(f"{where}: up to date, nothing to apply", markup=False)
    for m in applied:
        out.print(f"applied {m.version} ({m.component})", style="green", markup=False)
    if applied:
        out.print(f"{where}: {len(applied)} migration(s) applied", markup=False)
    if seed_notify is not None:
        state = "on" if seed_notify else "off"
        out.print(f"seed 001 trigger notify_new_event: {state}", markup=False)
