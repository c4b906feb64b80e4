"""``python -m bench outbox``: what the transactional outbox costs a writer, and how fast and how
soon the relay publishes.

Three figures, contenders interleaved round-robin in one run:

- ``write`` (PostgreSQL; SQLite with synchronous FULL and NORMAL): committed business rows per
  second, one row per transaction, each with one event written through ``Outbox.add`` in the
  same transaction (tidings), beside the same inserts without an event (the floor). Both write
  to identical tables of one database; each round checks that every row and every outbox row
  committed, then empties the outbox (untimed).
- ``lag`` (PostgreSQL): a second process commits one business row and its event per
  transaction at a paced 1,000/s; a relay in this process (woken by LISTEN) publishes to a
  callable. Latency from a ``perf_counter_ns`` stamp taken just before the commit to the target.
- ``redis`` (PostgreSQL -> Redis): a round's events are committed to the outbox first
  (untimed); the relay then publishes them to the Redis transport in batches of 1,000, timed
  from ``Relay.start()`` to the last row finished. The floor is redis-py pipelining the same
  pre-encoded bodies with XADD, 1,000 per round trip, into a stream of the same shape.

Goals (issue 11, a 2-core machine): the outbox costs at most 30% of the floor's throughput
(ratio >= 0.70); relay lag p99 < 50 ms at 1,000 events/s on PostgreSQL; the relay publishes
>= 20,000 events/s to Redis in batches. Every event is counted; a miscount exits 1.
``--quick`` is the smoke test of tests/test_bench_outbox.py.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from bench import Contender, fmt_duration, fmt_rate, machine_lines, percentile, run_rounds
from tidings.event import Event, encode
from tidings.outbox import Outbox, Relay, schema

DESCRIPTION = "The transactional outbox: writer cost against the floor, relay lag, relay to Redis."
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
SECTIONS = ("write", "lag", "redis")


PLACED = "bench.outbox.placed"


class OrderPlaced(Event, type=PLACED):
    """The event each business row carries: a typed event of a few fields."""

    seq: int
    amount: float
    sku: str
    t: int = 0  # lag: perf_counter_ns() just before the commit


@dataclass(slots=True)
class Options:
    quick: bool
    rounds: int
    writes: int
    relay_events: int
    lag_seconds: float
    rate: int
    pg: str | None
    redis: str | None
    only: tuple[str, ...]


def parse(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench outbox", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="smoke test: small rounds, < 30 s")
    p.add_argument("--rounds", type=int, help="measured rounds (default 5; quick 2)")
    p.add_argument("--writes", type=int, help="write: transactions per round (default 2,000)")
    p.add_argument("--relay-events", type=int, help="redis: events per round (default 50,000)")
    p.add_argument("--lag-seconds", type=float, help="lag: seconds of paced writes (default 10)")
    p.add_argument("--rate", type=int, default=1000, help="lag: offered events/s (default 1000)")
    p.add_argument("--pg", default=os.environ.get("TIDINGS_BENCH_PG", DEFAULT_PG))
    p.add_argument("--redis", default=os.environ.get("TIDINGS_BENCH_REDIS", DEFAULT_REDIS))
    p.add_argument("--no-pg", action="store_true", help="skip every PostgreSQL row")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated figures")
    a = p.parse_args(list(argv))
    only = tuple(x.strip() for x in str(a.only).split(",") if x.strip())
    if not only or set(only) - set(SECTIONS):
        p.error(f"--only: expected some of {','.join(SECTIONS)}, got {a.only!r}")
    return Options(
        quick=a.quick,
        rounds=a.rounds or (2 if a.quick else 5),
        writes=a.writes or (100 if a.quick else 2000),
        relay_events=a.relay_events or (3000 if a.quick else 50_000),
        lag_seconds=a.lag_seconds or (1.0 if a.quick else 10.0),
        rate=a.rate,
        pg=None if a.no_pg else a.pg,
        redis=a.redis,
        only=only,
    )


# --------------------------------------------------------------------------------- places


class Places:
    """A temp dir of SQLite files and one fresh PostgreSQL database, removed at the end."""

    def __init__(self, pg_admin: str | None) -> None:
        self.dir = tempfile.mkdtemp(prefix="tidings-bench-outbox-")
        self.pg_admin = pg_admin
        self.pg: str | None = None
        self.pg_problem: str | None = None if pg_admin else "--no-pg"
        self.pg_version = "n/a"
        if pg_admin is None:
            return
        try:
            import psycopg  # noqa: PLC0415

            name = f"bench_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(pg_admin, autocommit=True, connect_timeout=3) as conn:
                self.pg_version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
                conn.execute(f'CREATE DATABASE "{name}"')
            self.pg = pg_admin.rsplit("/", 1)[0] + "/" + name
            with psycopg.connect(self.pg) as conn:
                schema.apply(conn)
                for table in ("floor_orders", "outbox_orders", "second_orders"):
                    conn.execute(
                        f"CREATE TABLE {table} (id bigint PRIMARY KEY, amount numeric NOT NULL, "
                        "sku text NOT NULL)"
                    )
                conn.execute("CREATE TABLE plain_events (id bigint PRIMARY KEY, body text)")
                conn.commit()
        except Exception as exc:
            self.pg_problem = f"{type(exc).__name__}: {exc}".splitlines()[0]

    def sqlite(self, synchronous: str) -> str:
        path = os.path.join(self.dir, f"app-{synchronous.lower()}.db")
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode = WAL")
        schema.apply(conn)
        for table in ("floor_orders", "outbox_orders", "second_orders"):
            conn.execute(
                f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, amount REAL NOT NULL, "
                "sku TEXT NOT NULL)"
            )
        conn.execute("CREATE TABLE plain_events (id INTEGER PRIMARY KEY, body TEXT)")
        conn.commit()
        conn.close()
        return path

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.pg is not None and self.pg_admin is not None:
            import psycopg  # noqa: PLC0415

            with psycopg.connect(self.pg_admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg.rsplit("/", 1)[1]}" WITH (FORCE)')


# --------------------------------------------------------------------------------- write


@dataclass(slots=True)
class Work:
    n: int
    start: int  # first business id of the round


class _Seq:
    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> int:
        first = self.next
        self.next += n
        return first


def _writer(
    connect: Callable[[], Any],
    table: str,
    outbox: Outbox | None,
    mark: str,
    second_row: bool = False,
) -> tuple[Callable[[Work], float], Callable[[Work], str | None]]:
    """A contender committing one business row per transaction; with ``outbox`` one event
    through it as well; with ``second_row`` a pre-encoded event body into a bare table (what
    any second INSERT costs: the bound of an outbox that writes a row)."""
    conn = connect()
    insert = f"INSERT INTO {table} (id, amount, sku) VALUES ({mark}, {mark}, {mark})"
    insert2 = f"INSERT INTO plain_events (id, body) VALUES ({mark}, {mark})"
    body = encode(OrderPlaced(seq=0, amount=10.5, sku="sku-1", aggregate_id="0")).decode()
    problems: list[str] = []

    def count(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    def run(work: Work) -> float:
        rows0 = count(f"SELECT count(*) FROM {table}")
        conn.commit()
        t0 = perf_counter()
        for i in range(work.start, work.start + work.n):
            conn.execute(insert, (i, 10.5, "sku-1"))
            if outbox is not None:
                outbox.add(conn, OrderPlaced(seq=i, amount=10.5, sku="sku-1", aggregate_id=str(i)))
            elif second_row:
                conn.execute(insert2, (i, body))
            conn.commit()
        seconds = perf_counter() - t0
        rows = count(f"SELECT count(*) FROM {table}") - rows0
        events = count("SELECT count(*) FROM tidings_outbox") if outbox is not None else work.n
        if rows != work.n or events != work.n:
            problems.append(f"{table}: {rows} rows and {events} events for {work.n} commits")
        if outbox is not None:
            conn.execute("DELETE FROM tidings_outbox")
        conn.commit()
        return seconds

    def check(_work: Work) -> str | None:
        return problems.pop() if problems else None

    return run, check


def write_section(places: Places) -> list[tuple[str, list[Contender[Work]]]]:
    rows: list[tuple[str, list[Contender[Work]]]] = []
    if places.pg is not None:
        import psycopg  # noqa: PLC0415

        pg = places.pg
        f_run, f_check = _writer(lambda: psycopg.connect(pg), "floor_orders", None, "%s")
        t_run, t_check = _writer(lambda: psycopg.connect(pg), "outbox_orders", Outbox(), "%s")
        s_run, s_check = _writer(lambda: psycopg.connect(pg), "second_orders", None, "%s", True)
        rows.append(
            (
                "outbox.pg.write",
                [
                    Contender("tidings", "tidings", "tidings", t_run, t_check),
                    Contender("floor", "psycopg floor (no event)", "floor", f_run, f_check),
                    Contender("second", "floor + a bare second row", "floor", s_run, s_check),
                ],
            )
        )
    for sync in ("FULL", "NORMAL"):
        path = places.sqlite(sync)

        def opener(path: str = path, sync: str = sync) -> sqlite3.Connection:
            conn = sqlite3.connect(path)
            conn.execute(f"PRAGMA synchronous = {sync}")
            return conn

        f_run, f_check = _writer(opener, "floor_orders", None, "?")
        t_run, t_check = _writer(opener, "outbox_orders", Outbox(), "?")
        s_run, s_check = _writer(opener, "second_orders", None, "?", True)
        rows.append(
            (
                f"outbox.sqlite.write ({sync})",
                [
                    Contender("tidings", "tidings", "tidings", t_run, t_check),
                    Contender("floor", "sqlite3 floor (no event)", "floor", f_run, f_check),
                    Contender("second", "floor + a bare second row", "floor", s_run, s_check),
                ],
            )
        )
    return rows


# --------------------------------------------------------------------------------- lag


def _paced_writer(url: str, rate: int, seconds: float, first: int) -> None:
    """The application process: one row and its event per transaction, paced at ``rate``."""
    import psycopg  # noqa: PLC0415

    outbox = Outbox()
    conn = psycopg.connect(url)
    total = int(rate * seconds)
    start = time.monotonic()
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        seq = first + i
        conn.execute(
            "INSERT INTO outbox_orders (id, amount, sku) VALUES (%s, %s, %s)", (seq, 1.0, "s")
        )
        outbox.add(
            conn,
            OrderPlaced(
                seq=seq, amount=1.0, sku="s", aggregate_id=str(seq), t=time.perf_counter_ns()
            ),
        )
        conn.commit()
    conn.close()


@dataclass(slots=True)
class LagResult:
    offered: int
    events: int
    seconds: float
    latencies: list[float]
    problem: str | None


def lag_section(places: Places, opts: Options, seq: _Seq) -> LagResult | str:
    if places.pg is None:
        return f"skipped ({places.pg_problem})"
    lat: list[float] = []
    stamps: list[int] = []
    seen: set[int] = set()
    dupes = 0
    lock = threading.Lock()

    def target(event: Event) -> None:
        nonlocal dupes
        now = time.perf_counter_ns()
        assert isinstance(event, OrderPlaced)
        with lock:
            if event.seq in seen:
                dupes += 1
            seen.add(event.seq)
            stamps.append(event.t)
            lat.append((now - event.t) / 1e9)

    total = int(opts.rate * opts.lag_seconds)
    first = seq.take(total)
    relay = Relay(places.pg, target, poll_interval=1.0).start()
    try:
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(
            target=_paced_writer, args=(places.pg, opts.rate, opts.lag_seconds, first)
        )
        proc.start()
        proc.join(opts.lag_seconds * 3 + 30)
        deadline = time.monotonic() + 30
        while len(seen) < total and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        relay.stop()
    problem = None
    if len(seen) != total or dupes or set(range(first, first + total)) != seen:
        problem = f"lag: {len(seen)} of {total} events published, {dupes} twice"
    seconds = (max(stamps) - min(stamps)) / 1e9 if len(stamps) > 1 else float("inf")
    return LagResult(opts.rate, total, seconds, sorted(lat), problem)


# --------------------------------------------------------------------------------- redis


def redis_section(places: Places, opts: Options, seq: _Seq) -> list[Contender[Work]] | str:
    if places.pg is None:
        return f"skipped ({places.pg_problem})"
    try:
        import psycopg  # noqa: PLC0415
        import redis  # noqa: PLC0415

        from tidings.publishers import open_publisher  # noqa: PLC0415

        client = redis.Redis.from_url(str(opts.redis))
        client.ping()
    except Exception as exc:
        return f"skipped (Redis at {opts.redis}: {exc})"
    pg = places.pg
    problems: list[str] = []

    def fill(work: Work) -> list[OrderPlaced]:
        events = [
            OrderPlaced(seq=i, amount=2.5, sku="sku-r", aggregate_id=str(i % 1000))
            for i in range(work.start, work.start + work.n)
        ]
        with psycopg.connect(pg) as conn:
            Outbox().add(conn, events)
            conn.commit()
        return events

    def relay_run(work: Work) -> float:
        fill(work)
        prefix = f"bench-outbox-{uuid.uuid4().hex[:8]}"
        pub = open_publisher(f"{opts.redis}?prefix={prefix}")
        relay = Relay(pg, pub, batch_size=1000, poll_interval=1.0)
        t0 = perf_counter()
        relay.start()
        deadline = time.monotonic() + 120
        while relay.stats.published < work.n and time.monotonic() < deadline:
            time.sleep(0.001)
        seconds = perf_counter() - t0
        relay.stop()
        length = int(client.xlen(f"{prefix}:events"))
        client.delete(f"{prefix}:events")
        if length != work.n:
            problems.append(f"relay to redis: {length} entries for {work.n} events")
        return seconds

    def floor_run(work: Work) -> float:
        bodies = [
            encode(OrderPlaced(seq=i, amount=2.5, sku="sku-r", aggregate_id=str(i % 1000)))
            for i in range(work.start, work.start + work.n)
        ]
        stream = f"bench-outbox-floor-{uuid.uuid4().hex[:8]}:events"
        t0 = perf_counter()
        for start in range(0, len(bodies), 1000):
            pipe = client.pipeline(transaction=False)
            for body in bodies[start : start + 1000]:
                pipe.xadd(stream, {PLACED: body})
            pipe.execute()
        seconds = perf_counter() - t0
        length = int(client.xlen(stream))
        client.delete(stream)
        if length != work.n:
            problems.append(f"redis floor: {length} entries for {work.n} events")
        return seconds

    def check(_work: Work) -> str | None:
        return problems.pop() if problems else None

    return [
        Contender("tidings", "tidings relay", "tidings", relay_run, check),
        Contender("floor", "redis-py pipelined XADD floor", "floor", floor_run, check),
    ]


# --------------------------------------------------------------------------------- main


def _row(name: str, contenders: Sequence[Contender[Work]]) -> str:
    mine, *others = contenders
    return f"{name}: {mine.summary()} · " + " · ".join(mine.versus(o) for o in others)


def main(argv: Sequence[str] = ()) -> int:
    opts = parse(argv)
    t_start = perf_counter()
    places = Places(opts.pg)
    seq = _Seq()
    lines: list[str] = []
    goals: list[str] = []
    errors: list[str] = []
    rounds: dict[str, int] = {}

    def progress(msg: str) -> None:
        if not opts.quick:
            print(msg, file=sys.stderr, flush=True)

    try:
        if "write" in opts.only:
            for name, contenders in write_section(places):
                rounds[name] = run_rounds(
                    contenders,
                    lambda _r: Work(opts.writes, seq.take(opts.writes)),
                    warmup=Work(max(10, opts.writes // 10), seq.take(max(10, opts.writes // 10))),
                    min_rounds=opts.rounds,
                    max_rounds=opts.rounds,
                    budget=float("inf"),
                    progress=progress,
                )
                lines.append(_row(name, contenders))
                for c in contenders:
                    errors += c.errors
                ratio = contenders[0].median / contenders[1].median if contenders[1].median else 0
                goals.append(
                    f"  {name}: outbox costs at most 30% of the floor (>= 0.70): {ratio:.2f}, "
                    + ("met" if ratio >= 0.70 else "NOT MET")
                )
            if places.pg is None:
                lines.append(f"outbox.pg.write: skipped ({places.pg_problem})")
        if "lag" in opts.only:
            progress("lag: paced writer process")
            result = lag_section(places, opts, seq)
            label = f"outbox.pg.lag @ {opts.rate:,}/s offered"
            if isinstance(result, str):
                lines.append(f"{label}: {result}")
            else:
                lat = result.latencies
                p99 = percentile(lat, 99)
                lines.append(
                    f"{label}: {result.events:,} events, one per transaction "
                    f"(achieved {fmt_rate(result.events / result.seconds)}/s); commit stamp -> "
                    f"target p50 {fmt_duration(percentile(lat, 50))} · p99 {fmt_duration(p99)} · "
                    f"max {fmt_duration(lat[-1] if lat else float('nan'))}"
                )
                if result.problem:
                    errors.append(result.problem)
                goals.append(
                    f"  relay lag p99 < 50 ms at {opts.rate:,}/s on PostgreSQL: "
                    f"{fmt_duration(p99)}, " + ("met" if p99 < 0.05 else "NOT MET")
                )
        if "redis" in opts.only:
            progress("redis: relay batches")
            section = redis_section(places, opts, seq)
            name = "outbox.pg.relay_to_redis"
            if isinstance(section, str):
                lines.append(f"{name}: {section}")
            else:
                rounds[name] = run_rounds(
                    section,
                    lambda _r: Work(opts.relay_events, seq.take(opts.relay_events)),
                    warmup=Work(1000, seq.take(1000)),
                    min_rounds=opts.rounds,
                    max_rounds=opts.rounds,
                    budget=float("inf"),
                    progress=progress,
                )
                lines.append(_row(name, section))
                for c in section:
                    errors += c.errors
                median = section[0].median
                goals.append(
                    f"  relay to Redis >= 20,000 events/s in batches: {fmt_rate(median)}/s, "
                    + ("met" if median >= 20_000 else "NOT MET")
                )
    finally:
        places.close()

    print(
        "bench outbox: contenders round-robin, order rotated each round, +1 warm-up round; "
        f"measured rounds: {', '.join(f'{k} {v}' for k, v in rounds.items()) or 'none'}"
    )
    print(
        f"write: {opts.writes:,} transactions per round, each one business row (id, amount, sku) "
        "and, for tidings, one OrderPlaced event (seq, amount, sku; about 230 bytes of "
        "CloudEvents JSON) through Outbox.add; the floor inserts the row alone; 'floor + a "
        "bare second row' also inserts the pre-encoded event body into a two-column table"
    )
    print(
        f"lag: a second process commits {opts.rate:,}/s for {opts.lag_seconds:g} s; the relay "
        "(LISTEN, poll 1 s) publishes to a callable; redis: "
        f"{opts.relay_events:,} events per round committed first, relay batch_size 1000, "
        "keys spread over 1,000 aggregates"
    )
    print(
        f"postgresql {places.pg_version} at {opts.pg}: one fresh database, dropped after; "
        f"sqlite {sqlite3.sqlite_version}: WAL files in /tmp; redis at {opts.redis}"
    )
    for line in machine_lines(["tidings", "msgspec", "psycopg", "redis"]):
        print(line)
    print()
    for line in lines:
        print(line)
    print()
    print("goals (issue 11; set on a 2-core machine):")
    for line in goals:
        print(line)
    print()
    if errors:
        print("COUNT ERRORS:")
        for e in errors:
            print(f"  {e}")
        return 1
    print("count check: every row and every event committed, published and counted exactly once")
    print(f"total time {perf_counter() - t_start:.1f}s")
    return 0
