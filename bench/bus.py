"""``python -m bench bus``: the in-process Bus beside its floors and peers, in one run.

Goals (issue, 2-core machine), one subscriber, event already built unless said otherwise:
inline publish >= 2.5 M/s; async mode (4 workers) >= 0.6 M/s from first publish until
``drain()`` returns; build a typed event and publish it inline >= 0.5 M/s; 1,000 subscriptions
cost <= 1.5x one. Floors (plain call, dict lookup + call, asyncio.Queue hand-off) and peers
(blinker, pyee) run interleaved with tidings so the ratios hold on a noisy machine.

Every handler appends what it receives to one list (``list.append`` is atomic, so worker threads
can share it) and each round is checked: every event exactly once, or the run exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter
from types import ModuleType
from typing import Any

from bench import Contender, Kind, fmt_duration, fmt_rate, machine_lines, percentile, run_rounds
from tidings import Bus, Event

EVENT_TYPE = "x.y"
DESCRIPTION = "The in-process Bus beside its floors (call, dict, asyncio.Queue) and peers."
DRAIN_LIMIT = 120.0  # seconds; a bus that needs longer has lost events, and the check says so


class Tick(Event, type=EVENT_TYPE):
    """The issue's typed event: ``class X(Event, type="x.y"): a: str``."""

    a: str


class Stamped(Event, type="bench.latency"):
    """An event that carries its own index, so the handler can stamp its arrival."""

    seq: int


@dataclass(slots=True)
class Batch:
    """One round's input, built before any clock starts."""

    events: list[Tick]  # distinct, prebuilt: the rows that publish an event already built
    tokens: list[str]  # a distinct ``a`` per event: the build + publish row
    event_ids: frozenset[int]  # id() of each prebuilt event (they stay alive: ids are unique)
    token_set: frozenset[str]
    fresh: list[Event]  # events of types never published before: the route-miss rows

    @property
    def n(self) -> int:
        return len(self.events)


class Sink:
    """What the handlers received, cleared before each run (``put`` stays bound)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.put = self.items.append


def other_patterns(count: int) -> list[str]:
    """``count`` subscriptions that do not match ``x.y``: exact and glob mixed, some sharing
    the ``x`` prefix so an uncached lookup really walks the trie."""
    shapes = ("svc{i}.created", "x.y{i}", "svc{i}.*", "x.*.n{i}", "**.n{i}", "x.**.n{i}")
    return [shapes[i % len(shapes)].format(i=i) for i in range(count)]


def _import(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(name), None
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _miscount(label: str, delivered: int, got: set[Any], want: frozenset[Any]) -> str | None:
    if delivered == len(want) and got == want:
        return None
    return (
        f"{label}: {delivered:,} deliveries for {len(want):,} events: "
        f"{len(want - got):,} lost, {delivered - len(got):,} duplicated, "
        f"{len(got - want):,} unexpected"
    )


@dataclass(slots=True)
class Options:
    events: int
    min_rounds: int
    max_rounds: int
    budget: float
    workers: int
    buffer_size: int
    rate: int
    latency_seconds: float
    others: int
    quick: bool


def parse(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench bus", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="smoke test: small rounds, < 10 s")
    p.add_argument("--events", type=int, help="events per round (default 200,000; quick 20,000)")
    p.add_argument("--rounds", type=int, help="most measured rounds (default 20; quick 5)")
    p.add_argument("--budget", type=float, help="seconds for the rounds (default 60; quick 4)")
    p.add_argument("--workers", type=int, default=4, help="async-mode workers (default 4)")
    p.add_argument("--buffer-size", type=int, default=10_000, help="async buffer_size")
    p.add_argument("--rate", type=int, default=50_000, help="latency offered rate, events/s")
    p.add_argument("--latency-seconds", type=float, help="latency run (default 2; quick 0.3)")
    a = p.parse_args(list(argv))
    quick: bool = a.quick
    events = a.events if a.events is not None else (20_000 if quick else 200_000)
    rounds = a.rounds if a.rounds is not None else (5 if quick else 20)
    if events < 100 or rounds < 1:
        p.error("--events must be >= 100 and --rounds >= 1")
    return Options(
        events=events,
        min_rounds=min(5, rounds),
        max_rounds=rounds,
        budget=a.budget if a.budget is not None else (4.0 if quick else 60.0),
        workers=a.workers,
        buffer_size=a.buffer_size,
        rate=a.rate,
        latency_seconds=a.latency_seconds or (0.3 if quick else 2.0),
        others=999,
        quick=quick,
    )


class Rig:
    """The contenders and everything they share; ``close`` stops threads and loops."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.sink = Sink()
        self.stray = Sink()  # deliveries to the 999 non-matching subscriptions: must stay empty
        self.loop = asyncio.new_event_loop()
        self.closers: list[Callable[[], object]] = [self.loop.close]
        put = self.sink.put

        def on_event(event: Event) -> None:
            put(event)

        def on_typed(event: Tick) -> None:
            put(event.a)

        def on_signal(sender: Any) -> None:  # blinker passes the event as the sender
            put(sender)

        stray_put = self.stray.put

        def on_other(event: Event) -> None:
            stray_put(event)

        self.contenders: list[Contender[Batch]] = []
        self.by_key: dict[str, Contender[Batch]] = {}

        # --- floors: the same delivery done directly ---------------------------------------
        routes: dict[str, tuple[Callable[[Event], None], ...]] = {EVENT_TYPE: (on_event,)}

        def plain(b: Batch) -> float:
            handler = on_event
            t0 = perf_counter()
            for e in b.events:
                handler(e)
            return perf_counter() - t0

        def dict_call(b: Batch) -> float:
            table = routes
            t0 = perf_counter()
            for e in b.events:
                for handler in table[e.type]:
                    handler(e)
            return perf_counter() - t0

        def queue_handoff(b: Batch) -> float:
            return self.loop.run_until_complete(_handoff(b.events, on_event, opts.buffer_size))

        self.add("floor.plain", "plain call floor", "floor", plain)
        self.add("floor.dict", "dict floor", "floor", dict_call)
        self.add("floor.queue", "asyncio.Queue floor", "floor", queue_handoff)

        # --- peers -------------------------------------------------------------------------
        blinker, why = _import("blinker")
        if blinker is not None:
            signal = blinker.Signal()
            signal.connect(on_signal, weak=False)

            def blinker_send(b: Batch) -> float:
                send = signal.send
                t0 = perf_counter()
                for e in b.events:
                    send(e)
                return perf_counter() - t0

            self.add("peer.blinker", "blinker", "peer", blinker_send)
        else:
            self.add("peer.blinker", "blinker", "peer", None, skipped=why)

        pyee, why = _import("pyee")
        executor_mod, why_ex = _import("pyee.executor")
        if pyee is not None:
            emitter = pyee.EventEmitter()
            emitter.on(EVENT_TYPE, on_event)

            def pyee_emit(b: Batch) -> float:
                emit = emitter.emit
                t0 = perf_counter()
                for e in b.events:
                    emit(e.type, e)
                return perf_counter() - t0

            self.add("peer.pyee", "pyee", "peer", pyee_emit)
        else:
            self.add("peer.pyee", "pyee", "peer", None, skipped=why)
        label_ex = (
            f"pyee ExecutorEventEmitter({opts.workers} thread{'s' if opts.workers != 1 else ''})"
        )
        if executor_mod is not None:
            pool = ThreadPoolExecutor(opts.workers, thread_name_prefix="bench-pyee")
            self.closers.append(pool.shutdown)
            threaded = executor_mod.ExecutorEventEmitter(executor=pool)
            threaded.on(EVENT_TYPE, on_event)
            items = self.sink.items

            def pyee_threads(b: Batch) -> float:
                emit = threaded.emit
                n = len(b.events)
                t0 = perf_counter()
                for e in b.events:
                    emit(e.type, e)
                deadline = t0 + DRAIN_LIMIT
                while len(items) < n and perf_counter() < deadline:
                    time.sleep(0.001)  # the same polling as Bus.drain
                return perf_counter() - t0

            self.add("peer.pyee_threads", label_ex, "peer", pyee_threads)
        else:
            self.add("peer.pyee_threads", label_ex, "peer", None, skipped=why_ex)

        # --- tidings -----------------------------------------------------------------------
        inline = Bus()
        inline.subscribe(EVENT_TYPE, on_event)
        self.add("tidings.inline", "tidings", "tidings", _publisher(inline))

        crowded = Bus()
        others = other_patterns(opts.others)
        half = len(others) // 2
        for pattern in others[:half]:
            crowded.subscribe(pattern, on_other)
        mine = crowded.subscribe(EVENT_TYPE, on_event)
        for pattern in others[half:]:
            crowded.subscribe(pattern, on_other)
        if crowded.matching(EVENT_TYPE) != (mine,):
            raise SystemExit(f"bench bug: the other patterns match {EVENT_TYPE!r}")
        self.add("tidings.inline_1000", "tidings", "tidings", _publisher(crowded))

        builder = Bus()
        builder.subscribe(EVENT_TYPE, on_typed)

        def build_publish(b: Batch) -> float:
            publish = builder.publish
            cls = Tick
            t0 = perf_counter()
            for a in b.tokens:
                publish(cls(a=a))
            return perf_counter() - t0

        self.add("tidings.build", "tidings", "tidings", build_publish, check=self.check_tokens)

        pooled = Bus(mode="async", workers=opts.workers, buffer_size=opts.buffer_size)
        pooled.subscribe(EVENT_TYPE, on_event)
        self.closers.append(pooled.close)

        def async_publish(b: Batch) -> float:
            publish = pooled.publish
            t0 = perf_counter()
            for e in b.events:
                publish(e)
            pooled.drain(DRAIN_LIMIT)
            return perf_counter() - t0

        self.add("tidings.async", "tidings", "tidings", async_publish)

        coro_bus = Bus()
        coro_bus.subscribe(EVENT_TYPE, on_event)

        def apublish(b: Batch) -> float:
            return self.loop.run_until_complete(_apublish(coro_bus, b.events))

        self.add("tidings.apublish", "tidings", "tidings", apublish)

        # --- route misses: the first publish of a type walks the index (informative) --------
        for count, key in ((0, "miss.1"), (opts.others, "miss.1000")):
            bus = Bus()
            bus.subscribe(EVENT_TYPE, on_event)
            for pattern in other_patterns(count):
                bus.subscribe(pattern, on_other)
            self.add(
                key,
                f"{count + 1:,} subscription{'s' if count else ''}",
                "tidings",
                _fresh_publisher(bus),
                check=self.check_nothing,
                units=lambda b: len(b.fresh),
            )

    def add(
        self,
        key: str,
        label: str,
        kind: Kind,
        run: Callable[[Batch], float] | None,
        *,
        skipped: str | None = None,
        check: Callable[[str, Batch], str | None] | None = None,
        units: Callable[[Batch], int] | None = None,
    ) -> None:
        checker = check or self.check_events
        name = f"{key} ({label})"
        sink = self.sink

        def cleared(b: Batch) -> float:
            assert run is not None
            sink.items.clear()
            return run(b)

        def checked(b: Batch) -> str | None:
            problem = checker(name, b)
            if problem is None and self.stray.items:
                problem = f"{name}: {len(self.stray.items):,} events reached non-matching handlers"
            sink.items.clear()
            self.stray.items.clear()
            return problem

        c: Contender[Batch] = Contender(
            key,
            label,
            kind,
            cleared if run is not None else None,
            checked,
            units=units,
            skipped=skipped,
        )
        self.contenders.append(c)
        self.by_key[key] = c

    def check_events(self, name: str, b: Batch) -> str | None:
        items = self.sink.items
        return _miscount(name, len(items), {id(x) for x in items}, b.event_ids)

    def check_tokens(self, name: str, b: Batch) -> str | None:
        items = self.sink.items
        return _miscount(name, len(items), set(items), b.token_set)

    def check_nothing(self, name: str, b: Batch) -> str | None:
        if self.sink.items:
            return f"{name}: {len(self.sink.items):,} events of unsubscribed types delivered"
        return None

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def _publisher(bus: Bus) -> Callable[[Batch], float]:
    def run(b: Batch) -> float:
        publish = bus.publish
        t0 = perf_counter()
        for e in b.events:
            publish(e)
        return perf_counter() - t0

    return run


def _fresh_publisher(bus: Bus) -> Callable[[Batch], float]:
    def run(b: Batch) -> float:
        publish = bus.publish
        t0 = perf_counter()
        for e in b.fresh:
            publish(e)
        return perf_counter() - t0

    return run


async def _handoff(events: list[Tick], handler: Callable[[Event], None], size: int) -> float:
    """Producer and consumer in one loop through a bounded queue, until all are handled."""
    queue: asyncio.Queue[Tick] = asyncio.Queue(size)
    n = len(events)

    async def consume() -> None:
        get = queue.get
        for _ in range(n):
            handler(await get())

    t0 = perf_counter()
    task = asyncio.create_task(consume())
    put = queue.put
    for e in events:
        await put(e)
    await task
    return perf_counter() - t0


async def _apublish(bus: Bus, events: list[Tick]) -> float:
    publish = bus.apublish
    t0 = perf_counter()
    for e in events:
        await publish(e)
    return perf_counter() - t0


def make_batches(n: int, fresh: int) -> tuple[Batch, Callable[[int], Batch]]:
    """The warm-up batch and a factory for the measured ones (new fresh types each round)."""
    events = [Tick(a=f"e{i}") for i in range(n)]
    tokens = [f"t{i}" for i in range(n)]
    ids = frozenset(map(id, events))
    token_set = frozenset(tokens)
    warm_n = max(100, n // 10)
    warm_events = events[:warm_n]
    warm_tokens = tokens[:warm_n]

    def fresh_events(tag: str, count: int) -> list[Event]:
        return [Event(type=f"x.m{tag}_{i}") for i in range(count)]

    warm = Batch(
        warm_events,
        warm_tokens,
        frozenset(map(id, warm_events)),
        frozenset(warm_tokens),
        fresh_events("w", max(10, fresh // 10)),
    )

    def work(round_index: int) -> Batch:
        return Batch(events, tokens, ids, token_set, fresh_events(str(round_index), fresh))

    return warm, work


@dataclass(slots=True)
class Latency:
    count: int
    offered: float
    achieved: float
    p50: float
    p99: float
    worst: float
    error: str | None


def measure_latency(opts: Options) -> Latency:
    """Publish at a paced rate to an async bus; latency = handler's clock - publisher's clock.

    The publisher sleeps until each event is due (``time.sleep``, which releases the GIL to the
    workers), so events that fall due during an oversleep go out back to back.
    """
    bus = Bus(mode="async", workers=opts.workers, buffer_size=opts.buffer_size)
    seen: list[float] = []
    got: list[int] = []
    got_put = got.append
    clock = perf_counter

    def on_stamped(event: Stamped) -> None:
        seen[event.seq] = clock()
        got_put(event.seq)

    bus.subscribe("bench.latency", on_stamped)
    interval = 1.0 / opts.rate

    def paced(count: int) -> tuple[list[float], list[Stamped]]:
        events = [Stamped(seq=i) for i in range(count)]
        sent = [0.0] * count
        seen[:] = [0.0] * count
        got.clear()
        publish = bus.publish
        start = clock() + 0.001
        for i, e in enumerate(events):
            due = start + i * interval
            now = clock()
            if now < due:
                time.sleep(due - now)
            sent[i] = clock()
            publish(e)
        bus.drain(DRAIN_LIMIT)
        return sent, events

    try:
        count = max(100, int(opts.rate * opts.latency_seconds))
        paced(max(100, count // 10))  # warm-up
        sent, _ = paced(count)
    finally:
        bus.close()
    error = None
    if sorted(got) != list(range(count)):
        error = (
            f"latency run: {len(got):,} deliveries for {count:,} events, "
            f"{count - len(set(got)):,} lost, {len(got) - len(set(got)):,} duplicated"
        )
    delays = sorted(seen[i] - sent[i] for i in range(count) if seen[i])
    span = sent[-1] - sent[0]
    return Latency(
        count=count,
        offered=opts.rate,
        achieved=(count - 1) / span if span > 0 else 0.0,
        p50=percentile(delays, 50),
        p99=percentile(delays, 99),
        worst=delays[-1] if delays else float("nan"),
        error=error,
    )


def _goal(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def report(rig: Rig, opts: Options, lat: Latency) -> list[str]:
    """The figure lines, one per figure, then the goals."""
    c = rig.by_key
    floors = [c["floor.plain"], c["floor.dict"]]
    peers = [c["peer.pyee"], c["peer.blinker"]]
    inline, crowded, build = c["tidings.inline"], c["tidings.inline_1000"], c["tidings.build"]
    pooled, coro = c["tidings.async"], c["tidings.apublish"]
    miss1, miss1000 = c["miss.1"], c["miss.1000"]

    def line(
        name: str,
        main: Contender[Batch],
        others: Sequence[Contender[Batch]],
        labels: dict[str, str] | None = None,
    ) -> str:
        shown = [main.versus(o, (labels or {}).get(o.key)) for o in others]
        return " · ".join([f"{name}: {main.summary()}", *shown])

    crowd_cost = inline.median / crowded.median if crowded.median else float("inf")
    build_ns = (1 / build.median - 1 / inline.median) * 1e9 if build.median else float("nan")
    miss_cost = miss1.median / miss1000.median if miss1000.median else float("inf")
    dict_floor = c["floor.dict"].median
    return [
        line("bus.inline", inline, floors + peers),
        line("bus.inline_1000_subs", crowded, [c["floor.dict"], *peers])
        + f" · cost vs 1 subscription {crowd_cost:.2f}x",
        line(
            "bus.build_publish",
            build,
            [inline, c["floor.dict"]],
            {"tidings.inline": "tidings publish of a prebuilt event"},
        )
        + f" · building costs {build_ns:,.0f} ns/event",
        line(
            "bus.async_4_workers" if opts.workers == 4 else "bus.async",
            pooled,
            [c["floor.queue"], c["peer.pyee_threads"]],
        ),
        line("bus.apublish", coro, [c["floor.dict"], c["floor.queue"], *peers]),
        f"bus.route_miss (first publish of a never-seen type): {miss1.summary()} · "
        f"{miss1000.summary()} · cost {miss_cost:.1f}x",
        f"bus.async_latency: offered {fmt_rate(lat.offered)}/s paced "
        f"(achieved {fmt_rate(lat.achieved)}/s), {lat.count:,} events, "
        f"{opts.workers} workers: p50 {fmt_duration(lat.p50)} · p99 {fmt_duration(lat.p99)} · "
        f"max {fmt_duration(lat.worst)}",
        "",
        "goals (issue; absolute figures were set on a machine whose dict floor was 5.4 M/s):",
        f"  inline publish >= 2,500,000/s: {fmt_rate(inline.median)}/s, "
        f"{_goal(inline.median >= 2.5e6)}; as 'half the dict floor' here "
        f"(>= {fmt_rate(dict_floor / 2)}/s): {_goal(inline.median >= dict_floor / 2)}",
        f"  async {opts.workers} workers >= 600,000/s: {fmt_rate(pooled.median)}/s, "
        f"{_goal(pooled.median >= 6e5)}",
        f"  build + publish typed >= 500,000/s: {fmt_rate(build.median)}/s, "
        f"{_goal(build.median >= 5e5)}",
        f"  1,000 subscriptions <= 1.5x one: {crowd_cost:.2f}x, {_goal(crowd_cost <= 1.5)} "
        f"(1 of the 1,000 matches: the counted 'x.y' handler)",
    ]


def main(argv: Sequence[str] = ()) -> int:
    opts = parse(argv)
    t_start = perf_counter()
    fresh = max(100, opts.events // 20)
    warm, work = make_batches(opts.events, fresh)
    rig = Rig(opts)
    sample = Tick(a="e100000")
    json_size = len(sample.to_json())
    gc.collect()
    gc.freeze()  # the prebuilt events are the benchmark's, not the bus's: collections skip them
    progress = None if opts.quick else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        rounds = run_rounds(
            rig.contenders,
            work,
            warmup=warm,
            min_rounds=opts.min_rounds,
            max_rounds=opts.max_rounds,
            budget=opts.budget,
            progress=progress,
        )
        lat = measure_latency(opts)
    finally:
        rig.close()
        gc.unfreeze()
    skipped = [f"{c.label} ({c.skipped})" for c in rig.contenders if c.skipped]
    lines = [
        f"bench bus{' --quick' if opts.quick else ''}: {rounds} rounds of {opts.events:,} "
        f"events per contender (+1 warm-up round of {warm.n:,}), round-robin, order rotated "
        "each round",
        f"event: class Tick(Event, type={EVENT_TYPE!r}): a: str; {json_size} bytes of JSON; "
        "prebuilt and distinct (the build row builds each one); 1 subscriber (exact 'x.y')",
        f"inline_1000_subs: 1 matching + {opts.others} non-matching subscriptions "
        f"(exact and glob: {', '.join(other_patterns(6))} ...)",
        f"async: Bus(mode='async', workers={opts.workers}, buffer_size={opts.buffer_size:,}, "
        "when_full='block'); events have no key, so workers take them round-robin; the "
        "asyncio.Queue floor uses maxsize=buffer_size",
        f"route_miss: {fresh:,} events of never-seen types per round (cached routes cost "
        "one dict lookup; this is the uncached walk)",
        *machine_lines(["tidings", "msgspec", "blinker", "pyee"]),
        "gc: prebuilt events frozen (gc.freeze); gc.collect() before each contender's run",
    ]
    if skipped:
        lines.append(f"skipped: {'; '.join(skipped)}")
    lines += ["", *report(rig, opts, lat)]
    errors = [e for c in rig.contenders for e in c.errors]
    if lat.error:
        errors.append(lat.error)
    lines.append("")
    if errors:
        lines.append(f"DELIVERY ERRORS ({len(errors)}): these figures are not valid")
        lines += [f"  {e}" for e in errors[:20]]
        if len(errors) > 20:
            lines.append(f"  ... and {len(errors) - 20} more")
    else:
        lines.append(
            "delivery check: every contender delivered every event exactly once, every round"
        )
    lines.append(f"total time {perf_counter() - t_start:.1f}s")
    print("\n".join(lines))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
