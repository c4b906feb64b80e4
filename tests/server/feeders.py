"""A second process that writes events for tests/server/test_sources.py; prints their ids.

    python -m tests.server.feeders append STORE_URL N [--batch B] [--pause S]
    python -m tests.server.feeders sql POSTGRES_URL N          # plain INSERTs, no tidings
    python -m tests.server.feeders publish TRANSPORT_URL N [--repeat K]
    python -m tests.server.feeders bus STORE_URL N [--worker] [--wait-delivered M]

Each prints one event id per line as soon as the event is committed (flushed), so a test can
see how far a writer got, and ``done`` on the last line when everything is written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from tidings import Bus, Event
from tidings.store import open_store


def _event(n: int) -> Event:
    return Event(type="shop.order.placed", source="feeder", data={"n": n})


def _say(*ids: str) -> None:
    for i in ids:
        print(i)
    sys.stdout.flush()


def append(url: str, n: int, batch: int, pause: float) -> None:
    store = open_store(url)
    try:
        for start in range(0, n, batch):
            recs = store.append([_event(i) for i in range(start, min(n, start + batch))])
            _say(*(r.event.id for r in recs))
            if pause:
                time.sleep(pause)
    finally:
        store.close()


def sql(url: str, n: int) -> None:
    """What seed 001's writers do: INSERT into the events table, one row per statement."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(n):
            event = _event(i)
            conn.execute(
                "INSERT INTO events (id, type, source, time, payload) "
                "VALUES (%s, %s, %s, now(), %s::json)",
                (event.id, event.type, event.source, event.to_json().decode()),
            )
            _say(event.id)


async def publish(url: str, n: int, repeat: int) -> None:
    """``repeat``: the first events go out that many extra times (same id): redeliveries."""
    from tidings.transports import open_transport  # noqa: PLC0415

    transport = open_transport(url)
    await transport.start()
    try:
        events = [_event(i) for i in range(n)]
        for event in events:
            await transport.publish(event)
            _say(event.id)
        for _ in range(repeat):
            await transport.publish_many(events[: max(1, n // 10)])
    finally:
        await transport.close()


def bus(url: str, n: int, worker: bool, wait_delivered: int) -> None:
    """An application: a Bus with webhooks attached in one call, publishing ``n`` events."""
    from tidings.webhooks import attach  # noqa: PLC0415

    app_bus = Bus()
    hooks = attach(app_bus, url, worker=worker)
    try:
        for i in range(n):
            event = _event(i)
            app_bus.publish(event)
            _say(event.id)
        deadline = time.monotonic() + 60
        while wait_delivered and hooks.queue.stats().delivered < wait_delivered:
            if time.monotonic() > deadline:
                print(json.dumps(hooks.queue.stats().__dict__, default=str), file=sys.stderr)
                raise SystemExit("deliveries did not finish in 60s")
            time.sleep(0.05)
    finally:
        hooks.close()
        app_bus.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["append", "sql", "publish", "bus"])
    parser.add_argument("url")
    parser.add_argument("n", type=int)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--wait-delivered", type=int, default=0)
    args = parser.parse_args()
    if args.what == "append":
        append(args.url, args.n, args.batch, args.pause)
    elif args.what == "sql":
        sql(args.url, args.n)
    elif args.what == "publish":
        asyncio.run(publish(args.url, args.n, args.repeat))
    else:
        bus(args.url, args.n, args.worker, args.wait_delivered)
    print("done", flush=True)


if __name__ == "__main__":
    main()
