"""``python -m bench triggers``: the trigger processor on one process, store queue.

- ``triggers.process[N]`` (``.pg``: on PostgreSQL, with ``--pg``): events per second a
  Processor takes from the store, evaluates against N active triggers and enqueues (the
  matched actions as jobs in the store's database), from the start of its subscription until
  its checkpoint reaches the store's head (the events are stored before the clock starts; no
  workers run). Floors, interleaved in the same rounds:
  ``evaluate`` (bare ``TriggerIndex.evaluate`` over the same events in memory: the raw
  evaluation) and ``read`` (the same subscription with a handler that does nothing: the store's
  reading). Every round counts the jobs enqueued against ``match_events``' count made
  beforehand (a difference is printed and exits 1).
- ``triggers.latency[N]``: commit -> action started at an offered rate (default 1,000 events/s):
  each event carries the time taken just before its append; a registered action notes when it
  starts; p50, p99 and max, with every event's action counted once.

The workload is ``bench conditions``' (seed-001-like types, data and extensions) with exact
patterns only (``--globs`` to add globs): with N triggers over as many types, about one trigger
per event, half of whose conditions hold. The line says how many jobs each event made.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import Contender, fmt_duration, machine_lines, percentile, run_rounds
from bench.conditions import event_types, make_event, make_rules
from tidings.event import Event
from tidings.store import Criteria, open_store
from tidings.triggers.actions import ActionContext
from tidings.triggers.actions.registry import register_action, unregister_action
from tidings.triggers.definitions import ActionSpec, Trigger
from tidings.triggers.index import TriggerIndex
from tidings.triggers.jobs import SqlJobQueue
from tidings.triggers.matching import match_events
from tidings.triggers.processor import Processor
from tidings.triggers.results import ActionResults
from tidings.triggers.workers import ActionWorkers

WORKERS = 64  # actions run at once (processor.workers)
DESCRIPTION = "The trigger processor: events/s evaluated + enqueued; commit -> action latency."


@dataclass(slots=True)
class Round:
    events: list[Event]
    index: TriggerIndex
    jobs: int  # what match_events says the events start

    @property
    def n(self) -> int:
        return len(self.events)


class ProcessorRun:
    """One round of the processor (``noop``: the subscription alone, the ``read`` floor)."""

    def __init__(self, noop: bool = False, pg: str | None = None) -> None:
        self.noop = noop
        self.pg = pg
        self.jobs = -1
        self.handled = -1

    def run(self, work: Round) -> float:
        with _Database(self.pg) as url:
            store: Any = open_store(url)
            try:
                for i in range(0, len(work.events), 1000):
                    store.append(work.events[i : i + 1000])
            finally:
                store.close()
            return asyncio.run(self._run(work, url))

    async def _run(self, work: Round, url: str) -> float:
        store: Any = open_store(url)
        head = store.head()
        queue, results = SqlJobQueue(url), ActionResults(url)
        try:
            if self.noop:
                done = threading.Event()
                seen = [0]

                def handler(page: list[Any]) -> None:
                    seen[0] += len(page)
                    if page[-1].position >= head:
                        done.set()

                start = time.perf_counter()
                sub = store.subscribe(Criteria(), handler, name="bench-read", batch=True)
                await asyncio.to_thread(done.wait, 600)
                elapsed = time.perf_counter() - start
                sub.stop()
                self.handled = seen[0]
                return elapsed
            proc = Processor(store, queue, results, index_source=lambda: work.index)
            start = time.perf_counter()
            await proc.start()
            while proc.positions()[0] < head:
                await asyncio.sleep(0.001)
            elapsed = time.perf_counter() - start
            await proc.stop()
            self.jobs = proc.counts["new_jobs"]
            self.handled = proc.counts["events"]
            return elapsed
        finally:
            await queue.close()
            await results.close()
            store.close()

    def check(self, work: Round) -> str | None:
        if self.handled != work.n:
            return f"{self.handled} events handled, expected {work.n}"
        if not self.noop and self.jobs != work.jobs:
            return f"{self.jobs} jobs enqueued, expected {work.jobs}"
        return None


class EvaluateRun:
    """The floor: ``TriggerIndex.evaluate`` over the events in memory."""

    def __init__(self) -> None:
        self.matched = -1

    def run(self, work: Round) -> float:
        evaluate, hits = work.index.evaluate, 0
        start = time.perf_counter()
        for event in work.events:
            for _trigger, answer in evaluate(event):
                if answer is True:
                    hits += 1
        elapsed = time.perf_counter() - start
        self.matched = hits
        return elapsed

    def check(self, work: Round) -> str | None:
        if self.matched != work.jobs:  # one action per trigger: matches == jobs
            return f"{self.matched} matches, expected {work.jobs}"
        return None


def _workload(count: int, events: int, globs: float, seed: int) -> Round:
    rng = random.Random(seed)
    types = event_types(count)
    rules = make_rules(count, types, rng, globs)
    index = TriggerIndex(rules.triggers)
    batch = [make_event(rng, types) for _ in range(events)]
    stored = [_as_stored(e, i) for i, e in enumerate(batch)]
    jobs = len(match_events(index, stored).jobs)
    return Round(batch, index, jobs)


def _as_stored(event: Event, position: int) -> Any:
    from tidings.store.base import Recorded  # noqa: PLC0415

    return Recorded(event=event, position=position + 1)


def process_figure(count: int, events: int, globs: float, rounds: int, pg: str | None) -> int:
    work = _workload(count, events, globs, seed=count)
    warm = _workload(count, min(events, 500), globs, seed=count + 1)
    proc, read, floor = ProcessorRun(pg=pg), ProcessorRun(noop=True, pg=pg), EvaluateRun()
    contenders: list[Contender[Round]] = [
        Contender("tidings", "tidings", "tidings", proc.run, proc.check),
        Contender("evaluate", "evaluate", "floor", floor.run, floor.check),
        Contender("read", "read", "floor", read.run, read.check),
    ]
    run_rounds(contenders, lambda _i: work, warmup=warm, min_rounds=rounds, max_rounds=rounds,
               budget=0.0)  # fmt: skip
    tidings, *others = contenders
    parts = [tidings.summary(), *(tidings.versus(o) for o in others)]
    name = f"triggers.process[{count}]" + (".pg" if pg else "")
    kind = "postgresql" if pg else "sqlite"
    print(f"{name}: {' · '.join(parts)} · {work.jobs / work.n:.2f} jobs "
          f"per event, {events} events, {kind} store queue")  # fmt: skip
    bad = 0
    for c in contenders:
        for error in dict.fromkeys(c.errors):
            print(f"MISCOUNT {name} {c.label}: {error}")
            bad += 1
    return bad


async def _latency(count: int, rate: float, seconds: float, url: str) -> tuple[list[float], int]:
    started: dict[str, float] = {}
    runs: Counter[str] = Counter()

    def note(ctx: ActionContext) -> None:
        now = time.time()
        runs[ctx.event.id] += 1
        started.setdefault(ctx.event.id, now - float(ctx.event.data["t0"]))  # type: ignore[index]

    register_action("bench_latency", note)
    types = event_types(count)
    rules = make_rules(count, types, random.Random(7), 0.0)
    mark = Trigger("latency", "bench.latency", (ActionSpec("bench_latency"),))
    index = TriggerIndex([*rules.triggers, mark])
    store: Any = open_store(url)
    queue, results = SqlJobQueue(url), ActionResults(url)
    workers = ActionWorkers(queue, results, concurrency=WORKERS, poll_interval=0.05)
    proc = Processor(store, queue, results, index_source=lambda: index, poll_interval=0.05)
    task = asyncio.create_task(workers.run_until_stopped())
    await proc.start()
    total = int(rate * seconds)
    batch = max(1, int(rate / 200))  # appends of a few events, 200 a second
    ids: list[str] = []
    try:
        begin = time.perf_counter()
        for i in range(0, total, batch):
            due = begin + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            events = [Event(type="bench.latency", source="/bench", data={"t0": time.time()})
                      for _ in range(min(batch, total - i))]  # fmt: skip
            ids += [e.id for e in events]
            await asyncio.to_thread(store.append, events)
        deadline = time.monotonic() + 60
        while len(started) < len(ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await proc.stop()
        await workers.stop()
        await task
        await queue.close()
        await results.close()
        store.close()
        unregister_action("bench_latency")
    twice = sum(n - 1 for n in runs.values())
    missing = len(set(ids) - set(started))
    return sorted(started.values()), missing + twice


class _Database:
    """A fresh store: a SQLite file in a temp dir, or a new schema in the PostgreSQL database
    at ``pg`` (selected through the URL's search_path), removed afterwards."""

    def __init__(self, pg: str | None) -> None:
        self.pg = pg
        self.folder = Path(tempfile.mkdtemp(prefix="bench-triggers-"))
        self.schema = f"bench_triggers_{uuid.uuid4().hex[:10]}"
        self.kind = "postgresql" if pg else "sqlite"

    def __enter__(self) -> str:
        if self.pg is None:
            return f"sqlite:///{self.folder / 'events.db'}"
        import psycopg  # noqa: PLC0415

        from tidings.store.migrate import migrate  # noqa: PLC0415

        with psycopg.connect(self.pg, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"'.encode())
        sep = "&" if "?" in self.pg else "?"
        url = f"{self.pg}{sep}options=-csearch_path%3D{self.schema}"
        migrate(url)
        return url

    def __exit__(self, *_exc: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.pg is not None:
            import psycopg  # noqa: PLC0415

            with psycopg.connect(self.pg, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{self.schema}" CASCADE'.encode())


def latency_figure(count: int, rate: float, seconds: float, pg: str | None) -> int:
    db = _Database(pg)
    with db as url:
        lat, bad = asyncio.run(_latency(count, rate, seconds, url))
    print(
        f"triggers.latency[{count}]: commit -> action started p50 "
        f"{fmt_duration(percentile(lat, 50))} · p99 {fmt_duration(percentile(lat, 99))} · max "
        f"{fmt_duration(lat[-1] if lat else float('nan'))} · {len(lat)} events at "
        f"{rate:,.0f}/s offered, {db.kind} store queue, one processor + {WORKERS} workers"
    )
    if bad:
        print(f"MISCOUNT triggers.latency[{count}]: {bad} events missing or run twice")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench triggers", description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    parser.add_argument("--events", type=int, default=20_000, help="events per process round")
    parser.add_argument("--triggers", default="100,1000", help="trigger counts, comma-separated")
    parser.add_argument("--globs", type=float, default=0.0, help="share of glob patterns")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per figure")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency: events/s offered")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: seconds offered")
    parser.add_argument(
        "--pg",
        default=None,
        help="also measure on this PostgreSQL database (a schema of its own), e.g. "
        "postgresql://postgres@127.0.0.1:5432/test",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.rounds, args.seconds = 1000, 1, 1.0
    counts = [int(n) for n in args.triggers.split(",") if n.strip()]
    for line in machine_lines(["msgspec"]):
        print(line)
    print(f"work: {args.events} stored events a round over as many types as triggers, "
          f"{args.globs:.0%} glob patterns; {args.rounds} rounds; SQLite store and queue in a "
          f"temp dir{', and in a fresh PostgreSQL schema' if args.pg else ''}")  # fmt: skip
    bad = 0
    for pg in (None, args.pg) if args.pg else (None,):
        for count in counts:
            bad += process_figure(count, args.events, args.globs, args.rounds, pg)
    for pg in (None, args.pg) if args.pg else (None,):
        for count in counts:
            bad += latency_figure(count, args.rate, args.seconds, pg)
    return 1 if bad else 0
