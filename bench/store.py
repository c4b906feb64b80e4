"""``python -m bench store``: the event store beside the raw driver floors and ``eventsourcing``.

Four figures, each on SQLite and PostgreSQL, contenders interleaved round-robin in one run:

- ``append_1``: one event per transaction (tidings, with and without stream + expected_version;
  the floor is the driver inserting one row per commit into a bare table; the peer is the
  ``eventsourcing`` library saving one domain event per ``save``);
- ``append_1000``: 1,000 events per transaction (floors: ``executemany``, and psycopg ``COPY``;
  peer: ``eventsourcing`` saving an aggregate's 1,000 collected events in one ``save``);
- ``read_all``: paging through the whole store, decoded into events (floors: the driver fetching
  the same rows undecoded, and ``tidings.event.decode`` alone on the same bodies; peer:
  ``eventsourcing`` reading notification records, and the same mapped to domain events);
- ``live``: a subscription's latency from a ``perf_counter_ns`` stamp in the event's data, taken
  just before the appending transaction, to the handler, at a paced offered rate; the writer
  shares the subscriber's store (SQLite, in-process wake-up) or is another process (SQLite
  polling, PostgreSQL LISTEN), which keeps the writer off the subscriber's GIL.

Goals (issue 3, measured on a 2-core machine): batched append >= 65,000/s on PostgreSQL and
>= 100,000/s on SQLite; single-event append >= 80% of the raw one-row floor; catch-up read
>= 200,000 events/s decoded; a live subscription keeps up with 10,000/s on PostgreSQL with p99
commit -> handler < 50 ms. Every contender writes to its own SQLite file or PostgreSQL database
(``CREATE DATABASE bench_<hex>``, dropped at the end; the floors share one) and every round is
counted: rows in the table before and after, records returned, events read, events handled. A
miscount exits 1. ``--only live`` (etc.) runs one figure; ``--quick`` is the smoke test.
"""

from __future__ import annotations

import argparse
import importlib
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
from contextlib import suppress
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from bench import Contender, Kind, fmt_duration, fmt_rate, machine_lines, percentile, run_rounds
from tidings.event import Event, decode, encode
from tidings.store import Criteria, EventStore, Recorded, open_store, redact_url

SECTIONS = ("append_1", "append_1000", "read_all", "live")
DESCRIPTION = "The event store (SQLite, PostgreSQL) beside driver floors and eventsourcing."
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
PAGE = 1000  # read_all page size (events per query)
DRAIN_LIMIT = 60.0  # seconds a subscription may lag behind before its events count as lost
WARM_SEQ = 1_000_000_000  # latency warm-up events carry seq >= this


class OrderPlaced(Event, type="bench.store.placed"):
    """The appended and read event: a typed event with a few fields, like a domain event."""

    seq: int
    amount: float
    sku: str


STAMPED = "bench.store.stamped"


class Stamped(Event, type=STAMPED):
    """A latency probe: ``t`` is ``perf_counter_ns()`` taken just before its append."""

    seq: int
    t: int


# --------------------------------------------------------------------------------- options


@dataclass(slots=True)
class Options:
    quick: bool
    rounds: int
    single: int
    batches: int
    batch: int
    read: int
    latency_seconds: float
    rates: tuple[int, ...]
    pg: str | None
    keep: bool
    only: tuple[str, ...]


def parse(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench store", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 small rounds, < 40 s")
    p.add_argument("--rounds", type=int, help="measured rounds (default 5; quick 2)")
    p.add_argument(
        "--single", type=int, help="append_1: events per round (default 3,000; quick 50)"
    )
    p.add_argument(
        "--batches", type=int, help="append_1000: transactions per round (default 100; quick 2)"
    )
    p.add_argument("--batch", type=int, default=1000, help="events per batched transaction")
    p.add_argument("--read", type=int, help="read_all: events (default 100,000; quick 20,000)")
    p.add_argument(
        "--latency-seconds", type=float, help="live: seconds per offered rate (default 5; quick 1)"
    )
    p.add_argument(
        "--rates", default="1000,10000", help="live: offered rates, events/s (default 1000,10000)"
    )
    p.add_argument(
        "--pg",
        default=os.environ.get("TIDINGS_BENCH_PG", DEFAULT_PG),
        help=f"PostgreSQL admin URL; bench databases are created beside it (default {DEFAULT_PG})",
    )
    p.add_argument("--no-pg", action="store_true", help="skip every PostgreSQL row")
    p.add_argument("--keep", action="store_true", help="keep the temp files and databases")
    p.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated figures to run (default all: {','.join(SECTIONS)})",
    )
    a = p.parse_args(list(argv))
    quick: bool = a.quick
    rounds = a.rounds if a.rounds is not None else (2 if quick else 5)
    single = a.single if a.single is not None else (50 if quick else 3000)
    batches = a.batches if a.batches is not None else (2 if quick else 100)
    read = a.read if a.read is not None else (20_000 if quick else 100_000)
    try:
        rates = tuple(int(r) for r in str(a.rates).split(",") if r.strip())
    except ValueError:
        p.error(f"--rates: expected comma-separated integers, got {a.rates!r}")
    only = tuple(x.strip() for x in str(a.only).split(",") if x.strip())
    if not only or set(only) - set(SECTIONS):
        p.error(f"--only: expected some of {','.join(SECTIONS)}, got {a.only!r}")
    if rounds < 1 or single < 10 or batches < 1 or a.batch < 2 or read < a.batch or not rates:
        p.error("need --rounds >= 1, --single >= 10, --batches >= 1, --read >= --batch, a rate")
    return Options(
        quick=quick,
        rounds=rounds,
        single=single,
        batches=batches,
        batch=a.batch,
        read=read,
        latency_seconds=a.latency_seconds or (1.0 if quick else 5.0),
        rates=rates,
        pg=None if a.no_pg else a.pg,
        keep=a.keep,
        only=only,
    )


# --------------------------------------------------------------------------------- places


class Places:
    """Where contenders write: a temp dir of SQLite files, fresh PostgreSQL databases."""

    def __init__(self, pg_admin: str | None, keep: bool) -> None:
        self.dir = tempfile.mkdtemp(prefix="tidings-bench-store-")
        self.keep = keep
        self.pg_admin = pg_admin
        self.pg_problem: str | None = None
        self.pg_version = "n/a"
        self.databases: list[str] = []
        self.spare: list[str] = []  # created by reserve(), not handed out yet
        self.db_seconds = 0.0  # spent creating and dropping databases
        self.closers: list[Callable[[], object]] = []
        self.shared: dict[str, Any] = {}
        self.psycopg: Any = None
        if pg_admin is None:
            self.pg_problem = "--no-pg"
            return
        try:
            # only the driver and the server: a broken tidings backend skips its own rows (the
            # floors and eventsourcing still run), see Section.add_writer
            self.psycopg = importlib.import_module("psycopg")
            with self.psycopg.connect(pg_admin, autocommit=True, connect_timeout=3) as conn:
                self.pg_version = str(conn.execute("SHOW server_version").fetchone()[0])
        except Exception as exc:
            self.pg_problem = _why(exc)

    def sqlite(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.db")

    def reserve(self, count: int) -> None:
        """Create ``count`` databases at once, ahead of need (one at a time is slow on a busy
        server); ``database()`` hands them out."""
        if self.pg_problem is not None or count < 1:
            return
        t0 = perf_counter()
        made = _in_parallel({str(i): self._create for i in range(count)})
        self.spare += [name for name in made.values() if isinstance(name, str)]
        self.db_seconds += perf_counter() - t0

    def _create(self) -> str:
        name = f"bench_{uuid.uuid4().hex[:12]}"
        with self.psycopg.connect(self.pg_admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return name

    def database(self) -> str:
        """A fresh database ``bench_<hex>``; its URL (dropped in ``close``)."""
        if self.spare:
            name = self.spare.pop()
        else:
            t0 = perf_counter()
            name = self._create()
            self.db_seconds += perf_counter() - t0
        conninfo = self.psycopg.conninfo
        params = conninfo.conninfo_to_dict(self.pg_admin)
        params["dbname"] = name
        return str(conninfo.make_conninfo(**params))

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` the first time ``key`` is asked for, the same object afterwards: the
        append_1 and append_1000 rows of one contender share its database (fewer databases to
        create and drop; every check counts the rows its own round added)."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    def pg_params(self, url: str) -> dict[str, Any]:
        return dict(self.psycopg.conninfo.conninfo_to_dict(url))

    def close(self) -> None:
        for close in reversed(self.closers):
            with suppress(Exception):
                close()
        if self.keep:
            print(f"kept {self.dir} and databases {self.databases}", file=sys.stderr)
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        t0 = perf_counter()
        problems: list[str] = []

        def drop(name: str) -> None:  # in parallel: each DROP DATABASE waits for a checkpoint
            try:
                with self.psycopg.connect(self.pg_admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                problems.append(f"{name}: {_why(exc)}")

        threads = [threading.Thread(target=drop, args=(name,)) for name in self.databases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for problem in problems:
            print(f"could not drop bench database {problem}", file=sys.stderr)
        self.db_seconds += perf_counter() - t0


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".strip()


def _pg_url(places: Places) -> str:
    """tidings' URL form of a fresh database (postgresql://user@host:port/db)."""
    url = places.database()
    p = places.pg_params(url)
    auth = p.get("user", "postgres")
    if p.get("password"):
        auth += f":{p['password']}"
    return f"postgresql://{auth}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{p['dbname']}"


# --------------------------------------------------------------------------------- work


@dataclass(slots=True)
class AppendWork:
    """One round of appends, built before any clock starts; every contender gets the same."""

    txs: list[list[OrderPlaced]]  # one inner list per transaction
    bodies: list[list[str]]  # the same events as JSON text, for the floors
    es_txs: list[list[Any]]  # eventsourcing domain events per transaction (collected)
    tag: str  # unique per round: stream names

    @property
    def n(self) -> int:
        return sum(len(t) for t in self.txs)


def _events(count: int, start: int) -> list[OrderPlaced]:
    return [
        OrderPlaced(seq=start + i, amount=12.5 + i % 7, sku=f"SKU-{i % 97:04d}")
        for i in range(count)
    ]


class _Seq:
    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> int:
        first = self.next
        self.next += n
        return first


def append_work(tx_size: int, txs: int, es: EsKit | None, seq: _Seq) -> AppendWork:
    """``txs`` transactions of ``tx_size`` events (and eventsourcing's equivalent)."""
    first = seq.take(tx_size * txs)
    events = _events(tx_size * txs, first)
    groups = [events[i : i + tx_size] for i in range(0, len(events), tx_size)]
    bodies = [[encode(e).decode() for e in g] for g in groups]
    es_txs: list[list[Any]] = []
    if es is not None:
        if tx_size == 1:  # one aggregate, each of its events saved on its own
            es_txs = [[e] for e in es.collected(txs, first)]
        else:  # one aggregate per transaction, its tx_size events saved in one save
            es_txs = [es.collected(tx_size, first + i * tx_size) for i in range(txs)]
    return AppendWork(groups, bodies, es_txs, uuid.uuid4().hex[:8])


# --------------------------------------------------------------------------------- eventsourcing


class EsKit:
    """The ``eventsourcing`` peer: an aggregate whose events mirror ``OrderPlaced``."""

    def __init__(self) -> None:
        domain = importlib.import_module("eventsourcing.domain")
        event = domain.event

        class Order(domain.Aggregate):  # type: ignore[misc,name-defined]
            @event("Opened")  # type: ignore[untyped-decorator]
            def __init__(self, seq: int, amount: float, sku: str) -> None:
                pass

            @event("Placed")  # type: ignore[untyped-decorator]
            def place(self, seq: int, amount: float, sku: str) -> None:
                pass

        self.Application = importlib.import_module("eventsourcing.application").Application
        self.Order = Order

    def collected(self, count: int, first: int) -> list[Any]:
        """``count`` new domain events of one new aggregate, collected (ready to ``save``)."""
        agg = self.Order(seq=first, amount=12.5, sku="SKU-0000")
        for i in range(1, count):
            agg.place(seq=first + i, amount=12.5 + i % 7, sku=f"SKU-{i % 97:04d}")
        return list(agg.collect_events())

    def sqlite_app(self, path: str) -> Any:
        return self.Application(
            env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}
        )

    def pg_app(self, params: dict[str, Any]) -> Any:
        return self.Application(
            env={
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": params["dbname"],
                "POSTGRES_HOST": params.get("host", "127.0.0.1"),
                "POSTGRES_PORT": str(params.get("port", 5432)),
                "POSTGRES_USER": params.get("user", "postgres"),
                "POSTGRES_PASSWORD": params.get("password", ""),
            }
        )


def _load_es() -> tuple[EsKit | None, str | None]:
    try:
        return EsKit(), None
    except Exception as exc:
        return None, _why(exc)


# --------------------------------------------------------------------------------- counting


class Counter:
    """Counts rows in one table through its own connection (outside every timed region)."""

    def __init__(self, count: Callable[[], int], *closers: Callable[[], object]) -> None:
        self.count = count
        self.closers = list(closers)

    def close(self) -> None:
        for close in self.closers:
            close()


def sqlite_counter(path: str, table: str) -> Counter:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    return Counter(
        lambda: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]), conn.close
    )


def pg_counter(places: Places, url: str, table: str) -> Counter:
    conn = places.psycopg.connect(url, autocommit=True)
    return Counter(
        lambda: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]), conn.close
    )


class Section:
    """The contenders of one figure group, with the per-round count checks they all share."""

    def __init__(self, name: str, places: Places) -> None:
        self.name = name
        self.places = places
        self.contenders: list[Contender[Any]] = []
        self.by_key: dict[str, Contender[Any]] = {}

    def skip(self, key: str, label: str, kind: Kind, reason: str) -> None:
        c: Contender[Any] = Contender(key, label, kind, None, skipped=reason)
        self.contenders.append(c)
        self.by_key[key] = c

    def add_writer(
        self,
        key: str,
        label: str,
        kind: Kind,
        build: Callable[[], tuple[Callable[[AppendWork], int | None], Counter]],
    ) -> None:
        """A contender that writes ``work.n`` rows; ``build`` opens it (a failure: skipped).

        ``do(work)`` returns how many records the API reported written (None: it reports none);
        the check wants that and the table's row count to have grown by exactly ``work.n``.
        """
        try:
            do, counter = build()
        except Exception as exc:
            self.skip(key, label, kind, _why(exc))
            return
        self.places.closers.append(counter.close)
        seen: dict[str, int | None] = {}
        name = f"{self.name} {key} ({label})"

        def run(w: AppendWork) -> float:
            before = counter.count()
            t0 = perf_counter()
            reported = do(w)
            elapsed = perf_counter() - t0
            seen["grew"] = counter.count() - before
            seen["reported"] = reported
            return elapsed

        def check(w: AppendWork) -> str | None:
            grew, reported = seen.get("grew"), seen.get("reported")
            if grew != w.n or (reported is not None and reported != w.n):
                return (
                    f"{name}: {w.n:,} events appended, table grew by {grew}, "
                    f"API reported {reported}"
                )
            return None

        self.add(Contender(key, label, kind, run, check))

    def add(self, c: Contender[Any]) -> None:
        self.contenders.append(c)
        self.by_key[c.key] = c


# --------------------------------------------------------------------------------- append rows


def _tidings_plain(store: EventStore) -> Callable[[AppendWork], int]:
    def do(w: AppendWork) -> int:
        append = store.append
        return sum(len(append(tx)) for tx in w.txs)

    return do


def _tidings_stream(store: EventStore) -> Callable[[AppendWork], int]:
    """Single events continue one stream per round; batches open one new stream each."""

    def do(w: AppendWork) -> int:
        append = store.append
        done = 0
        if len(w.txs[0]) == 1:
            stream = f"order-{w.tag}"
            for i, tx in enumerate(w.txs):
                done += len(append(tx, stream=stream, expected_version=i))
        else:
            for i, tx in enumerate(w.txs):
                done += len(append(tx, stream=f"order-{w.tag}-{i}", expected_version=0))
        return done

    return do


def _es_save(app: Any) -> Callable[[AppendWork], None]:
    def do(w: AppendWork) -> None:
        save = app.save
        for tx in w.es_txs:
            save(*tx)

    return do


def _sqlite_floor(
    path: str, synchronous: str, batched: bool
) -> tuple[Callable[[AppendWork], None], Counter]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE floor_events (position INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    sql = "INSERT INTO floor_events (body) VALUES (?)"

    def one(w: AppendWork) -> None:
        execute = conn.execute
        for tx in w.bodies:
            execute("BEGIN")
            execute(sql, (tx[0],))
            execute("COMMIT")

    def many(w: AppendWork) -> None:
        execute = conn.execute
        for tx in w.bodies:
            execute("BEGIN")
            conn.executemany(sql, [(b,) for b in tx])
            execute("COMMIT")

    counter = sqlite_counter(path, "floor_events")
    counter.closers.append(conn.close)
    return (many if batched else one), counter


def _pg_floor_db(places: Places) -> tuple[Any, str]:
    url = places.database()
    conn = places.psycopg.connect(url, autocommit=True)
    places.closers.append(conn.close)
    conn.execute("CREATE TABLE floor_events (position bigserial PRIMARY KEY, body json NOT NULL)")
    return conn, url


def _pg_floor(places: Places, how: str) -> tuple[Callable[[AppendWork], None], Counter]:
    conn, url = places.once("pg.floor", lambda: _pg_floor_db(places))
    sql = "INSERT INTO floor_events (body) VALUES (%s)"

    def one(w: AppendWork) -> None:  # autocommit: one statement, one transaction, one round trip
        execute = conn.execute
        for tx in w.bodies:
            execute(sql, (tx[0],))

    def many(w: AppendWork) -> None:
        with conn.cursor() as cur:
            for tx in w.bodies:
                with conn.transaction():
                    cur.executemany(sql, [(b,) for b in tx])

    def copy(w: AppendWork) -> None:  # autocommit: each COPY is its own transaction
        with conn.cursor() as cur:
            for tx in w.bodies:
                with cur.copy("COPY floor_events (body) FROM STDIN") as cp:
                    for b in tx:
                        cp.write_row((b,))

    counter = pg_counter(places, url, "floor_events")
    return {"one": one, "many": many, "copy": copy}[how], counter


def _open_sqlite_store(places: Places, name: str, synchronous: str) -> tuple[EventStore, str]:
    path = places.sqlite(name)
    store = open_store(f"sqlite:///{path}?synchronous={synchronous}")
    places.closers.append(store.close)
    return store, path


def _open_pg_store(places: Places, seed_notify: bool = True) -> tuple[EventStore, str]:
    migrate = importlib.import_module("tidings.store.migrate").migrate
    url = _pg_url(places)
    migrate(url, seed_notify=None if seed_notify else False)
    store = open_store(url)
    places.closers.append(store.close)
    return store, url


def _shared_pg_store(places: Places, key: str, seed_notify: bool) -> tuple[EventStore, str]:
    found: tuple[EventStore, str] = places.once(key, lambda: _open_pg_store(places, seed_notify))
    return found


def append_section(
    title: str, places: Places, es: EsKit | None, es_why: str | None, batched: bool
) -> Section:
    s = Section(title, places)

    def tidings_sqlite(sync: str, stream: bool) -> Callable[[], tuple[Any, Counter]]:
        def build() -> tuple[Any, Counter]:
            store, path = _open_sqlite_store(places, f"tidings_{sync}_{stream}_{batched}", sync)
            do = _tidings_stream(store) if stream else _tidings_plain(store)
            return do, sqlite_counter(path, "tidings_events")

        return build

    def es_sqlite() -> tuple[Any, Counter]:
        assert es is not None
        path = places.sqlite(f"es_{batched}")
        app = es.sqlite_app(path)
        places.closers.append(app.close)
        return _es_save(app), sqlite_counter(path, app.recorder.events_table_name)

    s.add_writer("sqlite.tidings", "tidings", "tidings", tidings_sqlite("FULL", False))
    s.add_writer("sqlite.tidings_stream", "tidings stream", "tidings", tidings_sqlite("FULL", True))
    s.add_writer(
        "sqlite.tidings_normal", "tidings NORMAL", "tidings", tidings_sqlite("NORMAL", False)
    )
    floor = "sqlite3 executemany floor" if batched else "sqlite3 floor"
    s.add_writer(
        "sqlite.floor",
        floor,
        "floor",
        lambda: _sqlite_floor(places.sqlite(f"floor_full_{batched}"), "FULL", batched),
    )
    s.add_writer(
        "sqlite.floor_normal",
        floor,
        "floor",
        lambda: _sqlite_floor(places.sqlite(f"floor_normal_{batched}"), "NORMAL", batched),
    )
    if es is None:
        s.skip("sqlite.es", "eventsourcing", "peer", es_why or "not installed")
    else:
        s.add_writer("sqlite.es", "eventsourcing", "peer", es_sqlite)

    pg_rows: list[tuple[str, str, Kind, Callable[[], tuple[Any, Counter]]]] = []

    def tidings_pg(seed: bool, stream: bool) -> Callable[[], tuple[Any, Counter]]:
        def build() -> tuple[Any, Counter]:
            store, url = _shared_pg_store(places, f"pg.tidings.{seed}.{stream}", seed)
            do = _tidings_stream(store) if stream else _tidings_plain(store)
            return do, pg_counter(places, url, "events")

        return build

    def es_pg_app() -> tuple[Any, str]:
        assert es is not None
        url = places.database()
        app = es.pg_app(places.pg_params(url))
        places.closers.append(app.close)
        return app, url

    def es_pg() -> tuple[Any, Counter]:
        app, url = places.once("pg.es", es_pg_app)
        return _es_save(app), pg_counter(places, url, app.recorder.events_table_name)

    pg_rows.append(("pg.tidings", "tidings", "tidings", tidings_pg(True, False)))
    pg_rows.append(("pg.tidings_stream", "tidings stream", "tidings", tidings_pg(True, True)))
    pg_rows.append(
        ("pg.tidings_noseed", "tidings, seed trigger off", "tidings", tidings_pg(False, False))
    )
    if batched:
        pg_rows.append(
            ("pg.floor", "psycopg executemany floor", "floor", lambda: _pg_floor(places, "many"))
        )
        pg_rows.append(
            ("pg.copy", "psycopg COPY floor", "floor", lambda: _pg_floor(places, "copy"))
        )
    else:
        pg_rows.append(("pg.floor", "psycopg floor", "floor", lambda: _pg_floor(places, "one")))
    for key, label, kind, build in pg_rows:
        if places.pg_problem is not None:
            s.skip(key, label, kind, places.pg_problem)
        else:
            s.add_writer(key, label, kind, build)
    if places.pg_problem is not None or es is None:
        s.skip("pg.es", "eventsourcing", "peer", places.pg_problem or es_why or "not installed")
    else:
        s.add_writer("pg.es", "eventsourcing", "peer", es_pg)
    return s


# --------------------------------------------------------------------------------- read_all


@dataclass(slots=True)
class ReadWork:
    """Read the first ``n`` events of the store (all of them in a measured round)."""

    n: int


def _page_tidings(store: Any, counts: dict[str, Any]) -> Callable[[ReadWork], float]:
    def run(w: ReadWork) -> float:
        read_all = store.read_all
        t0 = perf_counter()
        after, count, ordered, typed = 0, 0, True, 0
        while count < w.n:
            page = read_all(after, min(PAGE, w.n - count))
            if not page:
                break
            for rec in page:
                ordered &= rec.position > after
                after = rec.position
                typed += isinstance(rec.event, OrderPlaced)
            count += len(page)
        elapsed = perf_counter() - t0
        counts.update(count=count, ordered=ordered, typed=typed)
        return elapsed

    return run


def _read_check(
    name: str, counts: dict[str, Any], typed: bool = True
) -> Callable[[ReadWork], str | None]:
    def check(w: ReadWork) -> str | None:
        count, ordered = counts.get("count"), counts.get("ordered")
        if count != w.n or not ordered or (typed and counts.get("typed") != w.n):
            return (
                f"{name}: {w.n:,} events stored, read {count} (in order: {ordered}, "
                f"decoded typed: {counts.get('typed')})"
            )
        return None

    return check


def _fill_tidings(store: EventStore, total: int, batch: int) -> EventStore:
    for first in range(0, total, batch):
        store.append(_events(min(batch, total - first), first))
    return store


def _fill_es(app: Any, batches: list[list[Any]]) -> Any:
    for events in batches:
        app.save(*events)
    return app


def _in_parallel(jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run the fills at once (PostgreSQL works while Python builds the next batch); each
    result is the job's value or the exception it raised."""
    results: dict[str, Any] = {}

    def run(key: str, job: Callable[[], Any]) -> None:
        try:
            results[key] = job()
        except Exception as exc:
            results[key] = exc

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _es_reader(app: Any, to_events: bool, counts: dict[str, Any]) -> Callable[[ReadWork], float]:
    def run(w: ReadWork) -> float:
        select = app.recorder.select_notifications
        to_domain = app.mapper.to_domain_event
        t0 = perf_counter()
        after, count, ordered = 0, 0, True
        while count < w.n:
            page = select(after, min(PAGE, w.n - count), inclusive_of_start=False)
            if not page:
                break
            if to_events:
                for n in page:
                    to_domain(n)
            for n in page:
                ordered &= n.id > after
                after = n.id
            count += len(page)
        elapsed = perf_counter() - t0
        counts.update(count=count, ordered=ordered)
        return elapsed

    return run


def read_section(places: Places, opts: Options, es: EsKit | None, es_why: str | None) -> Section:
    """Four stores filled with ``opts.read`` events each (at once), then read back per round."""
    s = Section("read_all", places)
    total = opts.read
    pg_ok = places.pg_problem is None
    jobs: dict[str, Callable[[], Any]] = {}
    sqlite_store, sqlite_path = _open_sqlite_store(places, "read_tidings", "NORMAL")
    jobs["sqlite.tidings"] = lambda: _fill_tidings(sqlite_store, total, opts.batch)
    if pg_ok:
        jobs["pg.tidings"] = lambda: _fill_tidings(_open_pg_store(places)[0], total, opts.batch)
    if es is not None:
        es_batches = [
            es.collected(min(opts.batch, total - f), f) for f in range(0, total, opts.batch)
        ]
        es_sqlite = es.sqlite_app(places.sqlite("read_es"))
        places.closers.append(es_sqlite.close)
        jobs["sqlite.es"] = lambda: _fill_es(es_sqlite, es_batches)
        if pg_ok:

            def es_pg() -> Any:
                app = es.pg_app(places.pg_params(places.database()))
                places.closers.append(app.close)
                return _fill_es(app, es_batches)

            jobs["pg.es"] = es_pg
    filled = _in_parallel(jobs)

    def source(key: str) -> tuple[Any, str | None]:
        if key.startswith("pg.") and not pg_ok:
            return None, places.pg_problem
        if key.endswith(".es") and es is None:
            return None, es_why or "eventsourcing not installed"
        found = filled.get(key)
        if isinstance(found, BaseException):
            return None, f"filling the store failed: {_why(found)}"
        return found, None

    def reader(
        key: str,
        label: str,
        kind: Kind,
        of: str,
        make: Callable[[Any, dict[str, Any]], Callable[[ReadWork], float]],
        typed: bool = True,
    ) -> None:
        target, why = source(of)
        if why is not None:
            s.skip(key, label, kind, why)
            return
        counts: dict[str, Any] = {}
        try:
            run = make(target, counts)
        except Exception as exc:
            s.skip(key, label, kind, _why(exc))
            return
        s.add(Contender(key, label, kind, run, _read_check(f"read_all {key}", counts, typed)))

    raw = sqlite3.connect(sqlite_path, isolation_level=None, check_same_thread=False)
    places.closers.append(raw.close)
    bodies = [
        r[0].encode() for r in raw.execute("SELECT body FROM tidings_events ORDER BY position")
    ]

    def sqlite_fetch(_store: Any, counts: dict[str, Any]) -> Callable[[ReadWork], float]:
        sql = (
            "SELECT position, body FROM tidings_events WHERE position > ? ORDER BY position LIMIT ?"
        )

        def run(w: ReadWork) -> float:
            t0 = perf_counter()
            after, count, ordered = 0, 0, True
            while count < w.n:
                rows = raw.execute(sql, (after, min(PAGE, w.n - count))).fetchall()
                if not rows:
                    break
                for pos, _body in rows:
                    ordered &= pos > after
                    after = pos
                count += len(rows)
            elapsed = perf_counter() - t0
            counts.update(count=count, ordered=ordered)
            return elapsed

        return run

    def decode_only(_store: Any, counts: dict[str, Any]) -> Callable[[ReadWork], float]:
        def run(w: ReadWork) -> float:
            t0 = perf_counter()
            events = [decode(b) for b in bodies[: w.n]]
            elapsed = perf_counter() - t0
            typed = sum(isinstance(e, OrderPlaced) for e in events)
            counts.update(count=len(events), ordered=True, typed=typed)
            return elapsed

        return run

    def pg_fetch(store: Any, counts: dict[str, Any]) -> Callable[[ReadWork], float]:
        class Raw(importlib.import_module("psycopg.adapt").Loader):  # type: ignore[misc]
            def load(self, data: bytes | bytearray | memoryview) -> bytes:
                return bytes(data)

        conn = places.psycopg.connect(store.url, autocommit=True)
        conn.adapters.register_loader("json", Raw)
        places.closers.append(conn.close)
        sql = "SELECT position, payload FROM events WHERE position > %s ORDER BY position LIMIT %s"

        def run(w: ReadWork) -> float:
            t0 = perf_counter()
            after, count, ordered = 0, 0, True
            with conn.cursor() as cur:
                while count < w.n:
                    rows = cur.execute(sql, (after, min(PAGE, w.n - count))).fetchall()
                    if not rows:
                        break
                    for pos, _body in rows:
                        ordered &= pos > after
                        after = pos
                    count += len(rows)
            elapsed = perf_counter() - t0
            counts.update(count=count, ordered=ordered)
            return elapsed

        return run

    def es_records(app: Any, counts: dict[str, Any]) -> Callable[[ReadWork], float]:
        return _es_reader(app, False, counts)

    def es_events(app: Any, counts: dict[str, Any]) -> Callable[[ReadWork], float]:
        return _es_reader(app, True, counts)

    for b, fetch in (("sqlite", sqlite_fetch), ("pg", pg_fetch)):
        driver = "sqlite3" if b == "sqlite" else "psycopg"
        reader(f"{b}.tidings", "tidings", "tidings", f"{b}.tidings", _page_tidings)
        reader(
            f"{b}.fetch", f"{driver} fetch floor (undecoded)", "floor", f"{b}.tidings", fetch, False
        )
        if b == "sqlite":
            reader("decode", "decode floor", "floor", "sqlite.tidings", decode_only)
        reader(f"{b}.es", "eventsourcing records", "peer", f"{b}.es", es_records, False)
        reader(f"{b}.es_events", "eventsourcing domain events", "peer", f"{b}.es", es_events, False)
    return s


# --------------------------------------------------------------------------------- live


@dataclass(slots=True)
class Latency:
    backend: str
    rate: int
    count: int = 0
    txs: int = 0
    achieved: float = 0.0
    stamped: list[float] = field(default_factory=list)  # stamp -> handler, seconds, sorted
    returned: list[float] = field(default_factory=list)  # append returned -> handler, sorted
    error: str | None = None
    skipped: str | None = None


class Probe:
    """A subscription handler that notes (seq, source stamp, arrival) for every event."""

    def __init__(self) -> None:
        self.got: list[tuple[int, int, int]] = []
        self._put = self.got.append

    def __call__(self, rec: Recorded) -> None:
        now = time.perf_counter_ns()
        e = rec.event
        assert isinstance(e, Stamped)
        self._put((e.seq, e.t, now))

    def wait(self, predicate: Callable[[list[tuple[int, int, int]]], bool], limit: float) -> bool:
        deadline = perf_counter() + limit
        while perf_counter() < deadline:
            if predicate(self.got):
                return True
            time.sleep(0.005)
        return predicate(self.got)


Batches = list[tuple[int, int, int]]  # (first seq, end seq, append returned, perf_counter_ns)
Produce = Callable[[int, int, int], tuple[Batches, int, float]]


def _paced(store: EventStore, rate: int, count: int, first_seq: int) -> tuple[Batches, int, float]:
    """Offer ``count`` events at ``rate``/s: each append carries every event due by then.

    Returns one (first seq, end seq, perf_counter_ns when the append returned) per
    transaction, the last position written, and the seconds it took.
    """
    interval = 1e9 / rate
    clock = time.perf_counter_ns
    start = clock() + 1_000_000
    sent = 0
    batches: Batches = []
    last = 0
    append = store.append
    while sent < count:
        now = clock()
        due = min(count, int((now - start) / interval) + 1) if now >= start else 0
        if due <= sent:
            time.sleep(max(0.0, (start + sent * interval - now) / 1e9))
            continue
        stamp = clock()
        recs = append([Stamped(seq=first_seq + j, t=stamp) for j in range(sent, due)])
        batches.append((first_seq + sent, first_seq + due, clock()))
        last = recs[-1].position
        sent = due
    return batches, last, (clock() - start) / 1e9


def _producer(url: str, conn: Any) -> None:
    """The writer process: opens its own store, then runs paced appends on request.

    ``perf_counter_ns`` is CLOCK_MONOTONIC on Linux, one clock for every process, so the stamps
    it writes compare with the subscriber's clock in the parent.
    """
    store = open_store(url)
    try:
        conn.send("ready")
        while True:
            request = conn.recv()
            if request is None:
                return
            conn.send(_paced(store, *request))
    finally:
        store.close()


class ProducerProcess:
    """A paced writer in another process: the subscriber shares no GIL and no store with it."""

    def __init__(self, url: str) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_producer, args=(url, child), daemon=True)
        self._proc.start()
        if not self._conn.poll(30) or self._conn.recv() != "ready":
            self.close()
            raise RuntimeError(f"producer process for {redact_url(url)} did not start")

    def __call__(self, rate: int, count: int, first_seq: int) -> tuple[Batches, int, float]:
        self._conn.send((rate, count, first_seq))
        if not self._conn.poll(DRAIN_LIMIT + count / rate):
            raise RuntimeError("producer process did not finish its paced run")
        result: tuple[Batches, int, float] = self._conn.recv()
        return result

    def close(self) -> None:
        with suppress(Exception):
            self._conn.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def measure_live(
    backend: str, produce: Produce, reader: EventStore, rate: int, seconds: float, after: int
) -> tuple[Latency, int]:
    """One paced run against a fresh subscription on ``reader``; returns (figure, last position)."""
    lat = Latency(backend, rate)
    probe = Probe()
    sub = reader.subscribe(
        Criteria(types=(STAMPED,), after_position=after),
        probe,
        name=f"bench-live-{rate}-{uuid.uuid4().hex[:6]}",
    )
    try:
        time.sleep(0.1)  # the subscription has caught up (nothing to read) and listens
        warm = max(50, rate // 10)
        _, after, _ = produce(rate, warm, WARM_SEQ)
        if not probe.wait(lambda got: len(got) >= warm, DRAIN_LIMIT):
            lat.error = f"live {backend} {rate}/s: warm-up: {len(probe.got)} of {warm} handled"
            return lat, after
        probe.got.clear()
        count = max(100, int(rate * seconds))
        batches, after, span = produce(rate, count, 0)
        probe.wait(lambda got: len(got) >= count, DRAIN_LIMIT)
        time.sleep(0.05)  # a duplicate would arrive now
    finally:
        sub.stop()
    got = list(probe.got)
    seqs = sorted(seq for seq, _, _ in got)
    lat.count, lat.txs, lat.achieved = count, len(batches), count / span if span else 0.0
    if seqs != list(range(count)):
        dupes = len(seqs) - len(set(seqs))
        lat.error = (
            f"live {backend} {rate}/s: {len(seqs):,} deliveries for {count:,} events, "
            f"{count - len(set(seqs) & set(range(count))):,} lost, {dupes:,} duplicated"
        )
    returned_at = [0] * count
    for lo, hi, at in batches:
        for seq in range(lo, hi):
            returned_at[seq] = at
    lat.stamped = sorted((arrived - t) / 1e9 for _, t, arrived in got)
    lat.returned = sorted(
        max(0, arrived - returned_at[seq]) / 1e9 for seq, _, arrived in got if 0 <= seq < count
    )
    return lat, after


def live_section(places: Places, opts: Options) -> list[Latency]:
    """sqlite.one_store: writer and subscriber share one store in one process (in-process
    wake-up). sqlite.two_processes and pg.listen: the writer is another process with its own
    store; the subscriber is woken by polling (SQLite) or LISTEN (PostgreSQL)."""
    out: list[Latency] = []
    path = places.sqlite("live")
    url = f"sqlite:///{path}"
    writer = open_store(url)
    places.closers.append(writer.close)
    after = 0

    def in_process(rate: int, count: int, first: int) -> tuple[Batches, int, float]:
        return _paced(writer, rate, count, first)

    for rate in opts.rates:
        lat, after = measure_live(
            "sqlite.one_store", in_process, writer, rate, opts.latency_seconds, after
        )
        out.append(lat)
    out += _live_two_processes("sqlite.two_processes", lambda: (writer, url), opts, after)
    if places.pg_problem is not None:
        return out + [Latency("pg.listen", r, skipped=places.pg_problem) for r in opts.rates]
    return out + _live_two_processes("pg.listen", lambda: _open_pg_store(places), opts, 0)


def _live_two_processes(
    backend: str, open_reader: Callable[[], tuple[EventStore, str]], opts: Options, after: int
) -> list[Latency]:
    try:
        reader, url = open_reader()
        producer = ProducerProcess(url)
    except Exception as exc:
        return [Latency(backend, r, skipped=_why(exc)) for r in opts.rates]
    out: list[Latency] = []
    try:
        for rate in opts.rates:
            lat, after = measure_live(backend, producer, reader, rate, opts.latency_seconds, after)
            out.append(lat)
    finally:
        producer.close()
    return out


# --------------------------------------------------------------------------------- report


def _line(name: str, main: Contender[Any], others: Sequence[Contender[Any]]) -> str:
    return " · ".join([f"{name}: {main.summary()}", *(main.versus(o) for o in others)])


def _goal(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def _rate(c: Contender[Any]) -> str:
    if c.rates:
        return f"{fmt_rate(c.median)}/s"
    return "skipped" if c.skipped else "no figure"


def _at_least(label: str, c: Contender[Any], goal: float, floor: Contender[Any] | None) -> str:
    line = f"  {label} >= {fmt_rate(goal)}/s: {_rate(c)}"
    if c.rates:
        line += f", {_goal(c.median >= goal)}"
        if floor is not None and floor.rates:
            line += f"; as half the {floor.label} here: {_goal(c.median >= floor.median / 2)}"
    return line


def _of_floor(label: str, c: Contender[Any], floor: Contender[Any], share: float) -> str:
    if not c.rates or not floor.rates:
        return f"  {label} >= {share:.0%} of the floor: {_rate(c)} vs {_rate(floor)}"
    ratio = c.median / floor.median
    return f"  {label} >= {share:.0%} of the floor: {ratio:.2f}, {_goal(ratio >= share)}"


def append_lines(s: Section, size: str) -> list[str]:
    c = s.by_key
    batched = "pg.copy" in c
    pg_floors = [c["pg.floor"], c["pg.copy"]] if batched else [c["pg.floor"]]
    return [
        _line(
            f"store.sqlite.{size} (FULL)", c["sqlite.tidings"], [c["sqlite.floor"], c["sqlite.es"]]
        ),
        _line(
            f"store.sqlite.{size} stream+expected_version (FULL)",
            c["sqlite.tidings_stream"],
            [c["sqlite.floor"], c["sqlite.es"]],
        ),
        _line(
            f"store.sqlite.{size} (NORMAL)", c["sqlite.tidings_normal"], [c["sqlite.floor_normal"]]
        ),
        _line(f"store.pg.{size}", c["pg.tidings"], [*pg_floors, c["pg.es"]]),
        _line(
            f"store.pg.{size} stream+expected_version",
            c["pg.tidings_stream"],
            [*pg_floors, c["pg.es"]],
        ),
        _line(
            f"store.pg.{size} seed trigger off",
            c["pg.tidings_noseed"],
            [*pg_floors, c["pg.tidings"]],
        ),
    ]


def read_lines(s: Section) -> list[str]:
    r = s.by_key
    return [
        _line(
            "store.sqlite.read_all",
            r["sqlite.tidings"],
            [r["sqlite.fetch"], r["decode"], r["sqlite.es"], r["sqlite.es_events"]],
        ),
        _line(
            "store.pg.read_all",
            r["pg.tidings"],
            [r["pg.fetch"], r["decode"], r["pg.es"], r["pg.es_events"]],
        ),
    ]


def live_lines(live: list[Latency]) -> list[str]:
    lines = []
    for lat in live:
        name = f"store.{lat.backend}.live @ {fmt_rate(lat.rate)}/s offered"
        if lat.skipped is not None:
            lines.append(f"{name}: skipped ({lat.skipped})")
            continue
        if not lat.stamped:
            lines.append(f"{name}: no figure ({lat.error})")
            continue
        s, ret = lat.stamped, lat.returned
        lines.append(
            f"{name}: {lat.count:,} events in {lat.txs:,} transactions (achieved "
            f"{fmt_rate(lat.achieved)}/s); stamp -> handler p50 {fmt_duration(percentile(s, 50))} "
            f"· p99 {fmt_duration(percentile(s, 99))} · max {fmt_duration(s[-1])}; append "
            f"returned -> handler p50 {fmt_duration(percentile(ret, 50))} · p99 "
            f"{fmt_duration(percentile(ret, 99))} · max {fmt_duration(ret[-1])}"
        )
    return lines


def goal_lines(sections: dict[str, Section], live: list[Latency]) -> list[str]:
    lines = ["goals (issue 3; set on a 2-core machine with PostgreSQL 15):"]
    if "append_1000" in sections:
        b = sections["append_1000"].by_key
        lines.append(_at_least("pg batched append", b["pg.tidings"], 65_000, b["pg.copy"]))
        lines.append(
            _at_least("sqlite batched append", b["sqlite.tidings"], 100_000, b["sqlite.floor"])
        )
    if "append_1" in sections:
        a = sections["append_1"].by_key
        lines.append(_of_floor("pg single append", a["pg.tidings"], a["pg.floor"], 0.8))
        lines.append(
            _of_floor("sqlite single append (FULL)", a["sqlite.tidings"], a["sqlite.floor"], 0.8)
        )
    if "read_all" in sections:
        r = sections["read_all"].by_key
        for backend in ("sqlite", "pg"):
            c = r[f"{backend}.tidings"]
            lines.append(_at_least(f"{backend} catch-up read, decoded", c, 200_000, None))
    for lat in live:
        if lat.backend != "pg.listen" or lat.rate != 10_000:
            continue
        label = "  pg live 10,000/s with p99 stamp -> handler < 50 ms"
        if not lat.stamped:
            lines.append(f"{label}: {lat.skipped or lat.error}")
            continue
        p99 = percentile(lat.stamped, 99)
        ok = p99 < 0.05 and lat.error is None and lat.achieved >= 0.95 * lat.rate
        lines.append(
            f"{label}: achieved {fmt_rate(lat.achieved)}/s, p99 {fmt_duration(p99)}, {_goal(ok)}"
        )
    return lines


def header(opts: Options, places: Places, rounds: dict[str, int]) -> list[str]:
    sample = encode(_events(1, 123_456)[0])
    done = ", ".join(f"{k} {v}" for k, v in rounds.items()) or "none"
    return [
        f"bench store{' --quick' if opts.quick else ''}: contenders round-robin, order rotated "
        f"each round, +1 warm-up round; measured rounds: {done}",
        f"event: class OrderPlaced(Event, type='bench.store.placed'): seq: int, amount: float, "
        f"sku: str; {len(sample)} bytes of CloudEvents JSON; eventsourcing: an Aggregate whose "
        "Opened/Placed events carry the same three fields",
        f"append_1: {opts.single:,} transactions of 1 event per round; append_1000: "
        f"{opts.batches:,} transactions of {opts.batch:,} per round; 'stream' rows pass "
        "stream= and expected_version= (single: one stream per round; batched: a new stream per "
        "transaction); eventsourcing saves prebuilt collected domain events: single = one "
        "aggregate's events, one save each; batched = one new aggregate's events in one save",
        "floors: a bare table (position primary key, body: SQLite TEXT, PostgreSQL json), bodies "
        "pre-encoded; sqlite3 BEGIN/INSERT/COMMIT and executemany; psycopg one autocommit INSERT, "
        "executemany in a transaction, autocommit COPY (text)",
        f"sqlite {sqlite3.sqlite_version}: WAL files in {tempfile.gettempdir()}; tidings "
        "synchronous=FULL (its default) and NORMAL; eventsourcing keeps SQLite's default, FULL",
        f"postgresql {places.pg_version} at {_where(opts.pg)}: a fresh database per contender "
        "(bench_<hex>, dropped after; its append_1 and append_1000 rows share it; the floors "
        "share one); tidings pool_size 10; seed 001's per-row new_event trigger is on unless the "
        "row says 'seed trigger off'",
        f"read_all: {opts.read:,} events paged {PAGE:,} per query into Recorded + typed events; "
        "decode floor: tidings.event.decode on the same bodies in memory; fetch floor: the "
        "driver paging the same table undecoded; eventsourcing: select_notifications pages "
        "(records), and those mapped by app.mapper.to_domain_event",
        f"live: {opts.latency_seconds:g} s per offered rate, paced (each append carries every "
        "event due by then); sqlite.one_store: writer and subscriber on one store in one process "
        "(in-process wake-up); sqlite.two_processes and pg.listen: the writer is a second "
        "process with its own store, the subscriber is woken by polling every 50 ms (SQLite's "
        "default poll_interval) or by LISTEN (PostgreSQL); latency "
        "from the perf_counter_ns stamp in data (taken just before the append) to the handler, "
        "and from the append's "
        "return to the handler: the commit lies between the two",
        *machine_lines(["tidings", "msgspec", "psycopg", "psycopg-pool", "eventsourcing"]),
    ]


def main(argv: Sequence[str] = ()) -> int:
    opts = parse(argv)
    t_start = perf_counter()
    places = Places(opts.pg, opts.keep)
    es, es_why = _load_es()

    def progress(msg: str) -> None:
        if not opts.quick:
            print(msg, file=sys.stderr, flush=True)

    sections: dict[str, Section] = {}
    live: list[Latency] = []
    rounds: dict[str, int] = {}
    phases: dict[str, float] = {}
    seq = _Seq()
    try:
        appends = {"append_1", "append_1000"} & set(opts.only)
        places.reserve(5 * bool(appends) + 2 * ("read_all" in opts.only) + ("live" in opts.only))
        for title, size, txs, warm in (
            ("append_1", 1, opts.single, max(10, opts.single // 20)),
            ("append_1000", opts.batch, opts.batches, 1),
        ):
            if title not in opts.only:
                continue
            t0 = perf_counter()
            s = sections[title] = append_section(title, places, es, es_why, batched=size > 1)
            progress(f"{title}: {sum(c.run is not None for c in s.contenders)} contenders")

            def work(_round: int, size: int = size, txs: int = txs) -> AppendWork:
                return append_work(size, txs, es, seq)

            rounds[title] = run_rounds(
                s.contenders,
                work,
                warmup=append_work(size, warm, es, seq),
                min_rounds=opts.rounds,
                max_rounds=opts.rounds,
                budget=float("inf"),
                progress=progress,
            )
            phases[title] = perf_counter() - t0
        if "read_all" in opts.only:
            t0 = perf_counter()
            progress(f"read_all: filling stores with {opts.read:,} events each")
            rs = sections["read_all"] = read_section(places, opts, es, es_why)
            rounds["read_all"] = run_rounds(
                rs.contenders,
                lambda _round: ReadWork(opts.read),
                warmup=ReadWork(max(opts.batch, opts.read // 10)),
                min_rounds=opts.rounds,
                max_rounds=opts.rounds,
                budget=float("inf"),
                progress=progress,
            )
            phases["read_all"] = perf_counter() - t0
        if "live" in opts.only:
            t0 = perf_counter()
            progress("live: paced subscriptions")
            live = live_section(places, opts)
            phases["live"] = perf_counter() - t0
    finally:
        places.close()
    lines = header(opts, places, rounds)
    skipped = [
        f"{s.name} {c.key} ({c.skipped})"
        for s in sections.values()
        for c in s.contenders
        if c.skipped
    ]
    if skipped:
        lines.append(f"skipped: {'; '.join(skipped)}")
    lines.append("")
    if "append_1" in sections:
        lines += append_lines(sections["append_1"], "append_1")
    if "append_1000" in sections:
        lines += append_lines(sections["append_1000"], "append_1000")
    if "read_all" in sections:
        lines += read_lines(sections["read_all"])
    lines += live_lines(live)
    lines += ["", *goal_lines(sections, live)]
    errors = [e for s in sections.values() for c in s.contenders for e in c.errors]
    errors += [lat.error for lat in live if lat.error]
    lines.append("")
    if errors:
        lines.append(f"COUNT ERRORS ({len(errors)}): these figures are not valid")
        lines += [f"  {e}" for e in errors[:20]]
        if len(errors) > 20:
            lines.append(f"  ... and {len(errors) - 20} more")
    else:
        lines.append(
            "count check: every contender wrote, read or handled every event exactly once, "
            "every round"
        )
    phases["databases"] = places.db_seconds
    times = ", ".join(f"{k} {v:.1f}s" for k, v in phases.items())
    lines.append(f"total time {perf_counter() - t_start:.1f}s ({times})")
    print("\n".join(lines))
    return 1 if errors else 0


def _where(url: str | None) -> str:
    return "(disabled)" if url is None else redact_url(url)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
