"""``python -m bench conditions``: the trigger condition language and the trigger index.

Figures, best of ``--repeat`` runs each, on one core:

- ``conditions.compile``: condition texts parsed and compiled per second;
- ``conditions.eval[<name>]``: evaluations per second of one compiled condition against a
  prepared event (the per-trigger cost of a processor);
- ``index.match[N]``: ``TriggerIndex.match(type)`` lookups per second with N triggers (the cache
  hit a processor pays per event);
- ``index.evaluate[N]``: events per second through ``TriggerIndex.evaluate`` with N triggers:
  match by type, then every matching trigger's condition (the processor's evaluation step, the
  issue's goal being >= 20,000 events/s with 1,000 triggers).

The triggers are spread over ``--types`` event types like seed 001's (registry.EventName), 90%
with an exact pattern and ``--globs`` (10%) with a glob (``identity.*``, a tenth of them
``**``), each with a two-part condition over data and extensions; the figure says how many
conditions each event met, since the cost grows with it. Every run counts the matches and
compares them with a count made once beforehand; a difference exits 1. ``--quick`` is the
smoke test.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from time import perf_counter

from bench import fmt_rate, machine_lines
from tidings.event import Event
from tidings.triggers.conditions import compile_condition
from tidings.triggers.definitions import ActionSpec, Trigger
from tidings.triggers.index import TriggerIndex

DESCRIPTION = "Trigger conditions (compile, evaluate) and the trigger index (match, evaluate)."
REGISTRIES = ("identity", "reputation", "validation")
NAMES = ("AgentRegistered", "MetadataSet", "FeedbackGiven", "ValidationRequested", "Transfer")

CONDITIONS = {
    "compare": "data.amount > 500",
    "and": 'data.amount > 500 and registry == "identity"',
    "path": 'data.items[0].sku == "A1"',
    "in": "chain_id in [1, 10, 8453, 11155111]",
    "string": 'data.agent startswith "0xab" and type endswith "Registered"',
    "matches": 'data.agent matches "^0x[0-9a-f]{4}"',
    "absent": "data.missing.deep > 1 or not exists(data.nothing)",
}


def _event(rng: random.Random, types: list[str]) -> Event:
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


def _types(count: int) -> list[str]:
    return [f"{REGISTRIES[i % 3]}.{NAMES[i % 5]}{i // 15 or ''}" for i in range(count)]


def _triggers(count: int, types: list[str], rng: random.Random, globs: float) -> list[Trigger]:
    log = (ActionSpec("log"),)
    found = []
    for i in range(count):
        if rng.random() >= globs:
            pattern = rng.choice(types)
        elif rng.random() < 0.1:
            pattern = "**"
        else:
            pattern = f"{rng.choice(REGISTRIES)}.*"
        text = rng.choice(
            (
                f"data.amount > {rng.randint(0, 1000)} and chain_id == 1",
                f'data.amount >= {rng.randint(0, 1000)} and registry == "identity"',
                'data.items[0].sku == "A1" and chain_id in [1, 8453]',
                f"block_number > {rng.randint(1, 10**7)} and data.amount < 900",
                'data.agent startswith "0xa" or data.amount == 7',
            )
        )
        found.append(Trigger(f"t{i}", pattern, log, compile_condition(text)))
    return found


def _best(repeat: int, run: Callable[[], int]) -> tuple[float, int]:
    """(best seconds, result of the last run) over ``repeat`` runs."""
    best, result = float("inf"), 0
    for _ in range(repeat):
        start = perf_counter()
        result = run()
        best = min(best, perf_counter() - start)
    return best, result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench conditions", description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--evals", type=int, default=200_000, help="evaluations per run")
    parser.add_argument("--triggers", default="100,1000", help="trigger counts, comma-separated")
    parser.add_argument("--types", type=int, default=200, help="distinct event types")
    parser.add_argument(
        "--globs", type=float, default=0.1, help="share of glob patterns (a tenth of them '**')"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (best counts)")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.evals, args.repeat = 1000, 5000, 1
    counts = [int(n) for n in args.triggers.split(",") if n.strip()]
    rng = random.Random(12)
    types = _types(args.types)
    events = [_event(rng, types) for _ in range(args.events)]
    for line in machine_lines(["msgspec"]):
        print(line)
    failures = 0

    texts = list(CONDITIONS.values())
    seconds, made = _best(
        args.repeat, lambda: sum(1 for _ in range(100) for t in texts if compile_condition(t))
    )
    print(f"conditions.compile: {fmt_rate(made / seconds)} conditions/s")

    sample = events[: min(len(events), 1000)]
    for name, text in CONDITIONS.items():
        condition = compile_condition(text)
        expected = sum(condition.evaluate(e) for e in sample)
        rounds = max(1, args.evals // len(sample))
        evaluate = condition.evaluate

        def run(evaluate: Callable[[Event], bool] = evaluate, rounds: int = rounds) -> int:
            hits = 0
            for _ in range(rounds):
                for event in sample:
                    if evaluate(event):
                        hits += 1
            return hits

        seconds, hits = _best(args.repeat, run)
        total = rounds * len(sample)
        if hits != expected * rounds:
            print(f"MISCOUNT conditions.eval[{name}]: {hits} != {expected * rounds}")
            failures += 1
        print(
            f"conditions.eval[{name}]: {fmt_rate(total / seconds)} evals/s "
            f"({seconds / total * 1e9:.0f} ns each, {expected / len(sample):.0%} true)"
        )

    for count in counts:
        index = TriggerIndex(_triggers(count, types, rng, args.globs))
        expected_pairs = sum(len(index.match(e.type)) for e in events)
        expected_true = sum(len(index.matched(e)) for e in events)
        event_types = [e.type for e in events]

        def match_all(index: TriggerIndex = index, event_types: list[str] = event_types) -> int:
            return sum(len(index.match(t)) for t in event_types)

        seconds, pairs = _best(args.repeat, match_all)
        if pairs != expected_pairs:
            print(f"MISCOUNT index.match[{count}]: {pairs} != {expected_pairs}")
            failures += 1
        print(f"index.match[{count}]: {fmt_rate(len(events) / seconds)} lookups/s")

        def evaluate_all(index: TriggerIndex = index) -> int:
            return sum(1 for e in events for _, answer in index.evaluate(e) if answer is True)

        seconds, matched = _best(args.repeat, evaluate_all)
        if matched != expected_true:
            print(f"MISCOUNT index.evaluate[{count}]: {matched} != {expected_true}")
            failures += 1
        print(
            f"index.evaluate[{count}]: {fmt_rate(len(events) / seconds)} events/s "
            f"({expected_pairs / len(events):.1f} conditions evaluated and "
            f"{expected_true / len(events):.1f} matched per event, {len(types)} types)"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
