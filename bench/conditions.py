"""``python -m bench conditions``: the trigger condition language and the trigger index.

Contenders run interleaved, round-robin (bench.run_rounds), median with min and max:

- ``conditions.compile``: condition texts parsed and compiled per second;
- ``conditions.eval[<name>]``: evaluations per second of one compiled condition against prepared
  events (a processor's cost per trigger); floor: the same test hand-written as a Python
  function over the event (no absence or type checks); peer: JMESPath, the JSON query language
  a user might embed instead, compiled once, searching a prebuilt dict per event;
- ``index.match[N]``: ``TriggerIndex.match(type)`` per second with N triggers (the cached lookup
  a processor pays per event); floor: a dict of prebuilt lists by type;
- ``index.evaluate[N]``: events per second through ``TriggerIndex.evaluate``: match by type,
  then every matching trigger's condition (the processor's evaluation step; the issue's goal is
  >= 20,000 events/s with 1,000 triggers); floor: prebuilt lists of hand-written functions by
  type; peer: the same lists of compiled JMESPath expressions.

The triggers are spread over ``--types`` event types like seed 001's (registry.EventName), 90%
with an exact pattern and ``--globs`` (10%) with a glob (``identity.*``, a tenth of them
``**``), each with a two-part condition over data and extensions; the figure says how many
conditions each event met, since the cost grows with it. Every round of every contender counts
its true answers and must agree with tidings' count made beforehand (a difference is printed
and exits 1). ``--quick`` is the smoke test. ``event_types``, ``make_event`` and ``make_rules``
build the same workload for other benchmarks (``bench triggers``).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import Contender, Kind, machine_lines, run_rounds, version_of
from tidings.event import Event
from tidings.triggers.conditions import compile_condition
from tidings.triggers.definitions import ActionSpec, Trigger
from tidings.triggers.index import TriggerIndex

try:
    import jmespath
    import jmespath.parser
except ImportError:  # a peer, in the bench extra
    jmespath = None

DESCRIPTION = "Trigger conditions (compile, evaluate) and the trigger index (match, evaluate)."
REGISTRIES = ("identity", "reputation", "validation")
NAMES = ("AgentRegistered", "MetadataSet", "FeedbackGiven", "ValidationRequested", "Transfer")
Floor = Callable[[Event], bool]

# name -> (condition, hand-written floor, JMESPath or None)
CONDITIONS: dict[str, tuple[str, Floor, str | None]] = {
    "compare": ("data.amount > 500", lambda e: e.data["amount"] > 500, "data.amount > `500`"),
    "and": (
        'data.amount > 500 and registry == "identity"',
        lambda e: e.data["amount"] > 500 and e.extensions["registry"] == "identity",
        "data.amount > `500` && registry == 'identity'",
    ),
    "path": (
        'data.items[0].sku == "A1"',
        lambda e: e.data["items"][0]["sku"] == "A1",
        "data.items[0].sku == 'A1'",
    ),
    "in": (
        "chain_id in [1, 10, 8453, 11155111]",
        lambda e: e.extensions["chainid"] in (1, 10, 8453, 11155111),
        "contains(`[1, 10, 8453, 11155111]`, chain_id)",
    ),
    "string": (
        'data.agent startswith "0xab" or type endswith "Registered"',
        lambda e: e.data["agent"].startswith("0xab") or e.type.endswith("Registered"),
        "starts_with(data.agent, '0xab') || ends_with(type, 'Registered')",
    ),
    "matches": (
        'data.agent matches "^0x[0-9a-f]{3}0"',
        lambda e: e.data["agent"][5] == "0",
        None,  # JMESPath has no regular expressions
    ),
    "absent": (
        "data.missing.deep > 1 or not exists(data.nothing)",
        lambda e: "nothing" not in e.data,
        "(data.missing.deep > `1`) || !(data.nothing)",
    ),
}


def make_event(rng: random.Random, types: list[str]) -> Event:
    """A seed-001-like event: amount, agent, items in data; chain, registry, block extensions."""
    kind = rng.choice(types)
    return Event(
        type=kind,
        source="/bench",
        data={
            "amount": rng.randint(0, 1000),
            "agent": f"0x{rng.getrandbits(64):016x}",
            "items": [{"sku": rng.choice(("A1", "B2")), "qty": 1}],
        },
        extensions={
            "chainid": rng.choice((1, 10, 8453, 11155111)),
            "registry": kind.split(".")[0],
            "blocknumber": rng.randint(1, 10**7),
        },
    )


def as_dict(event: Event) -> dict[str, Any]:
    """What JMESPath searches: the envelope, data and extensions under their condition names."""
    ext = event.extensions or {}
    return {
        "type": event.type,
        "data": event.data,
        "chain_id": ext.get("chainid"),
        "registry": ext.get("registry"),
        "block_number": ext.get("blocknumber"),
    }


def event_types(count: int) -> list[str]:
    """``count`` seed-001-like types: ``identity.AgentRegistered``, ``reputation.MetadataSet``..."""
    return [f"{REGISTRIES[i % 3]}.{NAMES[i % 5]}{i // 15 or ''}" for i in range(count)]


def _template(rng: random.Random) -> tuple[str, Floor, str]:
    """One trigger condition: its text, a hand-written equivalent, the JMESPath equivalent."""
    k, b = rng.randint(0, 1000), rng.randint(1, 10**7)
    pick = rng.randrange(5)
    if pick == 0:
        return (
            f"data.amount > {k} and chain_id == 1",
            lambda e: e.data["amount"] > k and e.extensions["chainid"] == 1,
            f"data.amount > `{k}` && chain_id == `1`",
        )
    if pick == 1:
        return (
            f'data.amount >= {k} and registry == "identity"',
            lambda e: e.data["amount"] >= k and e.extensions["registry"] == "identity",
            f"data.amount >= `{k}` && registry == 'identity'",
        )
    if pick == 2:
        return (
            'data.items[0].sku == "A1" and chain_id in [1, 8453]',
            lambda e: e.data["items"][0]["sku"] == "A1" and e.extensions["chainid"] in (1, 8453),
            "data.items[0].sku == 'A1' && contains(`[1, 8453]`, chain_id)",
        )
    if pick == 3:
        return (
            f"block_number > {b} and data.amount < 900",
            lambda e: e.extensions["blocknumber"] > b and e.data["amount"] < 900,
            f"block_number > `{b}` && data.amount < `900`",
        )
    return (
        'data.agent startswith "0xa" or data.amount == 7',
        lambda e: e.data["agent"].startswith("0xa") or e.data["amount"] == 7,
        "starts_with(data.agent, '0xa') || data.amount == `7`",
    )


@dataclass(slots=True)
class Rules:
    """N triggers, each with its floor function and JMESPath text."""

    triggers: list[Trigger]
    floors: dict[str, Floor]
    peers: dict[str, str]


def make_rules(count: int, types: list[str], rng: random.Random, globs: float) -> Rules:
    """``count`` triggers over ``types``, a share ``globs`` of them with glob patterns."""
    log = (ActionSpec("log"),)
    rules = Rules([], {}, {})
    for i in range(count):
        if rng.random() >= globs:
            pattern = rng.choice(types)
        elif rng.random() < 0.1:
            pattern = "**"
        else:
            pattern = f"{rng.choice(REGISTRIES)}.*"
        text, floor, peer = _template(rng)
        tid = f"t{i}"
        rules.triggers.append(Trigger(tid, pattern, log, compile_condition(text)))
        rules.floors[tid], rules.peers[tid] = floor, peer
    return rules


@dataclass(slots=True)
class Batch:
    """One round's input: the events (and their dicts, for JMESPath), ``repeat`` times."""

    events: list[Event]
    dicts: list[dict[str, Any]]
    repeat: int = 1

    @property
    def n(self) -> int:
        return len(self.events) * self.repeat


class Counted:
    """A contender body that counts true answers, checked against the expected count."""

    def __init__(self, body: Callable[[Batch], int], expected: int) -> None:
        self.body, self.expected, self.last = body, expected, -1

    def run(self, batch: Batch) -> float:
        start = time.perf_counter()
        self.last = self.body(batch)
        return time.perf_counter() - start

    def check(self, _batch: Batch) -> str | None:
        if self.last != self.expected:
            return f"{self.last} true answers, expected {self.expected}"
        return None


def _contender(
    key: str, kind: Kind, body: Callable[[Batch], int] | None, expected: int, skipped: str = ""
) -> Contender[Batch]:
    if body is None:
        return Contender(key, key, kind, None, skipped=skipped)
    counted = Counted(body, expected)
    return Contender(key, key, kind, counted.run, counted.check)


def _figure(name: str, contenders: list[Contender[Batch]], extra: str = "") -> int:
    """Print one figure line; the number of contenders with counting errors."""
    tidings, *others = contenders
    parts = [tidings.summary(), *(tidings.versus(o) for o in others)]
    print(f"{name}: {' · '.join(parts)}{extra}")
    bad = 0
    for c in contenders:
        for error in dict.fromkeys(c.errors):
            print(f"MISCOUNT {name} {c.label}: {error}")
            bad += 1
    return bad


def _rounds(contenders: list[Contender[Batch]], batch: Batch, rounds: int) -> None:
    run_rounds(
        contenders,
        lambda _i: batch,
        warmup=batch,
        min_rounds=rounds,
        max_rounds=rounds,
        budget=0.0,
    )


def _search_all(compiled: Any) -> Callable[[Batch], int]:
    def body(batch: Batch) -> int:
        search, hits = compiled.search, 0
        for _ in range(batch.repeat):
            for d in batch.dicts:
                if search(d):
                    hits += 1
        return hits

    return body


def _call_all(test: Callable[[Event], bool]) -> Callable[[Batch], int]:
    def body(batch: Batch) -> int:
        hits = 0
        for _ in range(batch.repeat):
            for event in batch.events:
                if test(event):
                    hits += 1
        return hits

    return body


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench conditions", description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    parser.add_argument("--events", type=int, default=10_000, help="events per index round")
    parser.add_argument("--evals", type=int, default=100_000, help="evaluations per round")
    parser.add_argument("--triggers", default="100,1000", help="trigger counts, comma-separated")
    parser.add_argument("--types", type=int, default=200, help="distinct event types")
    parser.add_argument(
        "--globs", type=float, default=0.1, help="share of glob patterns (a tenth of them '**')"
    )
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per figure")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.evals, args.rounds = 500, 2000, 1
    counts = [int(n) for n in args.triggers.split(",") if n.strip()]
    rng = random.Random(12)
    types = event_types(args.types)
    events = [make_event(rng, types) for _ in range(args.events)]
    dicts = [as_dict(e) for e in events]
    for line in machine_lines(["msgspec", "jmespath"]):
        print(line)
    print(
        f"work: {len(events)} events over {len(types)} types; conditions on a sample of "
        f"{min(1000, len(events))} events, {args.evals} evaluations a round; {args.rounds} "
        f"rounds; jmespath {version_of('jmespath')} searches a dict prebuilt per event"
    )
    failures = 0
    no_peer = "jmespath is not installed (pip install tidings[bench])"

    texts = [text for text, _, _ in CONDITIONS.values()]
    compile_batch = Batch(events[:1], dicts[:1], repeat=len(texts) * 20)

    def compile_all(batch: Batch) -> int:
        return sum(
            1 for _ in range(batch.repeat // len(texts)) for t in texts if compile_condition(t)
        )

    compiles = [_contender("tidings", "tidings", compile_all, compile_batch.repeat)]
    if jmespath is not None:
        peer_texts = [p for _, _, p in CONDITIONS.values() if p is not None]

        def compile_peer(batch: Batch, peer_texts: list[str] = peer_texts) -> int:
            # the same number of compilations, cycling through the JMESPath texts; its parser
            # caches compiled texts, so the cache is emptied before each one
            parser, done = jmespath.parser.Parser(), 0
            for i in range(batch.repeat):
                parser.purge()
                if parser.parse(peer_texts[i % len(peer_texts)]):
                    done += 1
            return done

        compiles.append(_contender("jmespath", "peer", compile_peer, compile_batch.repeat))
    _rounds(compiles, compile_batch, args.rounds)
    failures += _figure("conditions.compile", compiles)

    sample = Batch(events[:1000], dicts[:1000])
    sample.repeat = max(1, args.evals // len(sample.events))
    for name, (text, floor, peer) in CONDITIONS.items():
        condition = compile_condition(text)
        expected = _call_all(condition.evaluate)(sample)
        contenders = [
            _contender("tidings", "tidings", _call_all(condition.evaluate), expected),
            _contender("floor", "floor", _call_all(floor), expected),
        ]
        if jmespath is None or peer is None:
            reason = no_peer if jmespath is None else "no regular expressions in JMESPath"
            contenders.append(_contender("jmespath", "peer", None, 0, reason))
        else:
            contenders.append(
                _contender("jmespath", "peer", _search_all(jmespath.compile(peer)), expected)
            )
        _rounds(contenders, sample, args.rounds)
        true_share = expected / sample.n
        failures += _figure(f"conditions.eval[{name}]", contenders, f"; {true_share:.0%} true")

    whole = Batch(events, dicts)
    for count in counts:
        rules = make_rules(count, types, rng, args.globs)
        index = TriggerIndex(rules.triggers)
        by_type = {t: index.match(t) for t in types}
        floors = {t: [rules.floors[x.id] for x in found] for t, found in by_type.items()}
        pairs = sum(len(index.match(e.type)) for e in events)
        matched = sum(len(index.matched(e)) for e in events)

        def match_all(batch: Batch, index: TriggerIndex = index) -> int:
            return sum(len(index.match(e.type)) for e in batch.events)

        def match_floor(batch: Batch, by_type: dict[str, Any] = by_type) -> int:
            return sum(len(by_type[e.type]) for e in batch.events)

        looked = [
            _contender("tidings", "tidings", match_all, pairs),
            _contender("floor", "floor", match_floor, pairs),
        ]
        _rounds(looked, whole, args.rounds)
        failures += _figure(f"index.match[{count}]", looked)

        def evaluate_all(batch: Batch, index: TriggerIndex = index) -> int:
            return sum(1 for e in batch.events for _, answer in index.evaluate(e) if answer is True)

        def evaluate_floor(batch: Batch, floors: dict[str, list[Floor]] = floors) -> int:
            return sum(1 for e in batch.events for test in floors[e.type] if test(e))

        evaluated = [
            _contender("tidings", "tidings", evaluate_all, matched),
            _contender("floor", "floor", evaluate_floor, matched),
        ]
        if jmespath is not None:
            peers = {
                t: [jmespath.compile(rules.peers[x.id]).search for x in found]
                for t, found in by_type.items()
            }

            def evaluate_peer(batch: Batch, peers: dict[str, list[Any]] = peers) -> int:
                return sum(
                    1
                    for e, d in zip(batch.events, batch.dicts, strict=True)
                    for search in peers[e.type]
                    if search(d)
                )

            evaluated.append(_contender("jmespath", "peer", evaluate_peer, matched))
        else:
            evaluated.append(_contender("jmespath", "peer", None, 0, no_peer))
        _rounds(evaluated, whole, args.rounds)
        failures += _figure(
            f"index.evaluate[{count}]",
            evaluated,
            f"; {pairs / len(events):.1f} conditions evaluated and {matched / len(events):.1f} "
            f"matched per event",
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
