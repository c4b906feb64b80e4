"""Subscription patterns: semantics against a reference matcher, the index, validation, cost."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from tidings import topics
from tidings.topics import (
    Pattern,
    PatternError,
    SubscriptionIndex,
    compile_pattern,
    matches,
    memoized,
)

# --- the reference matcher ----------------------------------------------------------------


def reference_regex(pattern: str) -> re.Pattern[str]:
    """Translate a pattern into a regex over the name with a dot appended after every segment.

    With every segment written as ``seg.``, each pattern segment is a self-contained piece:
    a literal is ``seg\\.``, ``*`` is one segment ``[^.]+\\.``, ``**`` is zero or more segments
    ``(?:[^.]+\\.)*``. No dot juggling around ``**`` is needed.
    """
    if pattern == "*":  # a bare '*' is every event, as the seeds write "all events"
        pattern = "**"
    parts = []
    for seg in pattern.split("."):
        if seg == "**":
            parts.append(r"(?:[^.]+\.)*")
        elif seg == "*":
            parts.append(r"[^.]+\.")
        else:
            parts.append(re.escape(seg) + r"\.")
    return re.compile("".join(parts))


def reference_match(pattern: str, name: str) -> bool:
    return reference_regex(pattern).fullmatch(name + ".") is not None


def test_reference_matcher_agrees_with_the_documented_examples() -> None:
    # The reference itself must be right before it can judge anything.
    assert reference_match("a.**", "a")
    assert reference_match("a.**", "a.b.c")
    assert not reference_match("a.**", "ab")
    assert reference_match("**", "x")
    assert reference_match("**.c", "c")
    assert reference_match("a.**.c", "a.c")
    assert reference_match("a.**.c", "a.b.b.c")
    assert not reference_match("a.*", "a")
    assert not reference_match("a.*", "a.b.c")
    assert reference_match("*.*", "a.b")
    assert reference_match("*", "a.b")  # a bare '*' is every event
    assert not reference_match("*.*", "a")
    assert reference_match("a.**.**.b", "a.b")


# --- strategies ---------------------------------------------------------------------------

# A small alphabet so that generated patterns and names actually match each other often.
LITERALS = ["a", "b", "c"]
pattern_segment = st.sampled_from([*LITERALS, "*", "**"])
pattern_strategy = st.lists(pattern_segment, min_size=1, max_size=6).map(".".join)
name_strategy = st.lists(st.sampled_from(LITERALS), min_size=1, max_size=6).map(".".join)
# Patterns that lean on runs of '**' (collapsed by compile_pattern).
dstar_heavy = st.lists(st.sampled_from(["a", "*", "**", "**"]), min_size=1, max_size=8).map(
    ".".join
)


class Tag:
    """A distinct subscription item (the index removes by identity)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"Tag({self.label!r})"


# --- Pattern.matches against the reference ------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(pattern=pattern_strategy | dstar_heavy, name=name_strategy)
def test_pattern_matches_agrees_with_reference(pattern: str, name: str) -> None:
    compiled = compile_pattern(pattern)
    assert compiled.matches(name) == reference_match(pattern, name)
    assert matches(pattern, name) == reference_match(pattern, name)


@settings(max_examples=300, deadline=None)
@given(
    patterns=st.lists(pattern_strategy | dstar_heavy, min_size=1, max_size=25),
    names=st.lists(name_strategy, min_size=1, max_size=10),
)
def test_index_match_agrees_with_reference_in_insertion_order(
    patterns: list[str], names: list[str]
) -> None:
    index: SubscriptionIndex[Tag] = SubscriptionIndex()
    tags = [Tag(f"{i}:{p}") for i, p in enumerate(patterns)]
    for pattern, tag in zip(patterns, tags, strict=True):
        index.add(compile_pattern(pattern), tag)
    assert len(index) == len(patterns)
    for name in names * 2:  # the second round is answered from the cache
        expected = tuple(t for p, t in zip(patterns, tags, strict=True) if reference_match(p, name))
        assert index.match(name) == expected, name


@settings(max_examples=300, deadline=None)
@given(
    patterns=st.lists(pattern_strategy, min_size=1, max_size=20),
    removals=st.lists(st.integers(min_value=0, max_value=19), max_size=10),
    names=st.lists(name_strategy, min_size=1, max_size=6),
)
def test_index_after_removals_agrees_with_reference(
    patterns: list[str], removals: list[int], names: list[str]
) -> None:
    index: SubscriptionIndex[Tag] = SubscriptionIndex()
    live = [(p, Tag(f"{i}:{p}")) for i, p in enumerate(patterns)]
    for pattern, tag in live:
        index.add(compile_pattern(pattern), tag)
    for name in names:
        index.match(name)  # warm the cache so removals must invalidate it
    for r in removals:
        if r < len(live):
            pattern, tag = live.pop(r)
            assert index.remove(compile_pattern(pattern), tag) is True
    for name in names:
        expected = tuple(t for p, t in live if reference_match(p, name))
        assert index.match(name) == expected, name
    assert len(index) == len(live)


class IndexMachine(RuleBasedStateMachine):
    """Random interleavings of add / remove / match against a plain list model."""

    entries = Bundle("entries")

    def __init__(self) -> None:
        super().__init__()
        self.index: SubscriptionIndex[Tag] = SubscriptionIndex(cache_size=4)
        self.model: list[tuple[str, Tag]] = []
        self.counter = 0

    @rule(target=entries, pattern=pattern_strategy | dstar_heavy)
    def add(self, pattern: str) -> tuple[str, Tag]:
        self.counter += 1
        tag = Tag(f"{self.counter}:{pattern}")
        self.index.add(compile_pattern(pattern), tag)
        self.model.append((pattern, tag))
        return (pattern, tag)

    @rule(entry=consumes(entries))
    def remove(self, entry: tuple[str, Tag]) -> None:
        pattern, tag = entry
        assert self.index.remove(compile_pattern(pattern), tag) is True
        self.model.remove(entry)
        assert self.index.remove(compile_pattern(pattern), tag) is False

    @precondition(lambda self: self.model)
    @rule(name=name_strategy)
    def match(self, name: str) -> None:
        expected = tuple(t for p, t in self.model if reference_match(p, name))
        assert self.index.match(name) == expected

    @invariant()
    def size(self) -> None:
        assert len(self.index) == len(self.model)
        assert sorted(t.label for t in self.index.items()) == sorted(t.label for _, t in self.model)


IndexMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestIndexMachine = IndexMachine.TestCase


# --- documented semantics -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("order.placed", "order.placed", True),
        ("order.placed", "order.placed.v2", False),
        ("order.*", "order.placed", True),
        ("order.*", "order", False),
        ("order.*", "order.line.added", False),
        ("order.**", "order", True),
        ("order.**", "order.placed", True),
        ("order.**", "order.line.added", True),
        ("order.**", "orders.placed", False),
        ("**", "anything", True),
        ("**", "any.thing.at.all", True),
        ("*", "heartbeat", True),
        ("*", "user.created", True),  # a bare '*' means every event, as the seeds write it
        ("*", "order.line.added", True),
        ("*.*", "heartbeat", False),  # '*' inside a longer pattern is still one segment
        ("*.*", "user.created", True),
        ("*.*.create", "public.users.create", True),
        ("public.*.*", "public.users.create", True),
        ("**.failed", "failed", True),
        ("**.failed", "payment.charge.failed", True),
        ("a.**.z", "a.z", True),
        ("a.**.z", "a.b.c.z", True),
        ("a.**.z", "a.b.c", False),
    ],
)
def test_documented_semantics(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add(compile_pattern(pattern), "sub")
    assert index.match(name) == (("sub",) if expected else ())


def test_runs_of_double_star_collapse() -> None:
    assert compile_pattern("a.**.**.**.b").segments == ("a", "**", "b")
    assert compile_pattern("**.**").segments == ("**",)
    assert compile_pattern("a.**.**.**.b").text == "a.**.**.**.b"


def test_is_exact() -> None:
    assert compile_pattern("order.placed").is_exact
    assert not compile_pattern("order.*").is_exact
    assert not compile_pattern("order.**").is_exact


def test_pattern_is_a_frozen_value() -> None:
    assert compile_pattern("a.*") == Pattern("a.*", ("a", "*"))
    with pytest.raises(AttributeError):
        compile_pattern("a.*").text = "b"  # type: ignore[misc]


# --- the index ----------------------------------------------------------------------------


def test_match_returns_items_in_insertion_order_across_exact_and_wildcard() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for pattern, item in [
        ("**", "first"),
        ("order.placed", "second"),
        ("order.*", "third"),
        ("order.placed", "fourth"),
        ("*.placed", "fifth"),
        ("order.**", "sixth"),
        ("order.shipped", "never"),
    ]:
        index.add(compile_pattern(pattern), item)
    assert index.match("order.placed") == ("first", "second", "third", "fourth", "fifth", "sixth")


def test_an_item_matching_through_several_routes_is_returned_once_per_registration() -> None:
    index: SubscriptionIndex[Tag] = SubscriptionIndex()
    tag = Tag("t")
    index.add(compile_pattern("a.**.b"), tag)  # a.b matches via '**' swallowing 0 segments
    assert index.match("a.b.b") == (tag,)  # and via several splits: still one answer
    index.add(compile_pattern("a.*"), tag)
    assert index.match("a.b") == (tag, tag)  # two registrations, two deliveries


def test_remove_then_match() -> None:
    index: SubscriptionIndex[Tag] = SubscriptionIndex()
    exact, star, dstar = Tag("exact"), Tag("star"), Tag("dstar")
    index.add(compile_pattern("order.placed"), exact)
    index.add(compile_pattern("order.*"), star)
    index.add(compile_pattern("order.**"), dstar)
    assert index.match("order.placed") == (exact, star, dstar)

    assert index.remove(compile_pattern("order.*"), star) is True
    assert index.match("order.placed") == (exact, dstar)
    assert index.remove(compile_pattern("order.placed"), exact) is True
    assert index.match("order.placed") == (dstar,)
    # '**' runs collapse, so the same subscription can be named either way
    assert index.remove(compile_pattern("order.**.**"), dstar) is True
    assert index.match("order.placed") == ()
    assert len(index) == 0


def test_remove_unknown_returns_false() -> None:
    index: SubscriptionIndex[Tag] = SubscriptionIndex()
    tag = Tag("t")
    index.add(compile_pattern("a.*"), tag)
    assert index.remove(compile_pattern("a.*"), Tag("other")) is False
    assert index.remove(compile_pattern("b.*"), tag) is False
    assert index.remove(compile_pattern("a.b"), tag) is False
    assert index.remove(compile_pattern("a.*.c"), tag) is False
    assert index.match("a.b") == (tag,)


def test_remove_takes_one_registration_at_a_time() -> None:
    index: SubscriptionIndex[Tag] = SubscriptionIndex()
    tag = Tag("t")
    index.add(compile_pattern("a.b"), tag)
    index.add(compile_pattern("a.b"), tag)
    assert index.match("a.b") == (tag, tag)
    assert index.remove(compile_pattern("a.b"), tag) is True
    assert index.match("a.b") == (tag,)
    assert index.remove(compile_pattern("a.b"), tag) is True
    assert index.match("a.b") == ()
    assert index.remove(compile_pattern("a.b"), tag) is False


def test_cache_is_invalidated_on_add_and_remove() -> None:
    index: SubscriptionIndex[Tag] = SubscriptionIndex()
    first, second, third = Tag("1"), Tag("2"), Tag("3")
    assert index.match("a.b") == ()  # an empty answer is cached too
    index.add(compile_pattern("a.b"), first)
    assert index.match("a.b") == (first,)
    index.add(compile_pattern("a.*"), second)
    assert index.match("a.b") == (first, second)
    index.add(compile_pattern("**"), third)
    assert index.match("a.b") == (first, second, third)
    index.remove(compile_pattern("a.b"), first)
    assert index.match("a.b") == (second, third)
    index.remove(compile_pattern("**"), third)
    assert index.match("a.b") == (second,)


def test_repeated_match_is_served_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add(compile_pattern("a.*"), "x")
    walks = count_calls(monkeypatch, SubscriptionIndex, "_walk")
    first = index.match("a.b")
    assert walks["n"] > 0
    walks["n"] = 0
    assert index.match("a.b") is first
    assert walks["n"] == 0


def test_cache_is_bounded() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex(cache_size=8)
    index.add(compile_pattern("**"), "all")
    for i in range(100):
        assert index.match(f"t{i}") == ("all",)
        assert len(index._cache) <= 8


def test_items_lists_every_registration() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for p, item in [("a.b", "1"), ("a.*", "2"), ("**", "3"), ("a.b", "4")]:
        index.add(compile_pattern(p), item)
    assert sorted(index.items()) == ["1", "2", "3", "4"]


# --- cost: structure, not speed ------------------------------------------------------------


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> dict[str, int]:
    counter = {"n": 0}
    original = getattr(owner, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        counter["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return counter


def test_matching_5000_subscriptions_does_not_compare_each_pattern(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    services = [f"svc{i}" for i in range(1000)]
    for svc in services:  # 5 subscriptions per service: 3 exact, 2 wildcard -> 5,000
        index.add(compile_pattern(f"{svc}.entity.created"), f"{svc}:created")
        index.add(compile_pattern(f"{svc}.entity.updated"), f"{svc}:updated")
        index.add(compile_pattern(f"{svc}.entity.deleted"), f"{svc}:deleted")
        index.add(compile_pattern(f"{svc}.*.deleted"), f"{svc}:any-deleted")
        index.add(compile_pattern(f"{svc}.**"), f"{svc}:everything")
    index.add(compile_pattern("**"), "global")
    assert len(index) == 5001

    per_pattern = count_calls(monkeypatch, topics, "_match")
    per_pattern_method = count_calls(monkeypatch, Pattern, "matches")
    walks = count_calls(monkeypatch, SubscriptionIndex, "_walk")

    assert index.match("svc7.entity.deleted") == (
        "svc7:deleted",
        "svc7:any-deleted",
        "svc7:everything",
        "global",
    )
    # The per-pattern matcher is never used: the trie follows only the name's own segments.
    assert per_pattern["n"] == 0
    assert per_pattern_method["n"] == 0
    # Trie nodes visited stay a small constant, nowhere near the 5,000 subscriptions.
    assert walks["n"] <= 25, walks["n"]

    walks["n"] = 0
    assert index.match("svc999.other.thing") == ("svc999:everything", "global")
    assert walks["n"] <= 25, walks["n"]
    assert per_pattern["n"] == 0 and per_pattern_method["n"] == 0


# --- invalid patterns -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "pattern is empty; use '**' to match every event type"),
        ("a..b", "empty segment at position 2"),
        (".a", "empty segment at position 1"),
        ("a.", "empty segment at position 2"),
        (".", "empty segment"),
        ("***", "a wildcard is a whole segment"),
        ("a.***", "a wildcard is a whole segment"),
        ("a*", "mixes '*' with text"),
        ("*a.b", "mixes '*' with text"),
        ("a.b*c", "mixes '*' with text"),
        ("a b", "contains whitespace"),
        (" a", "contains whitespace"),
        ("a\t.b", "contains whitespace"),
        ("a.b\n", "contains whitespace"),
    ],
)
def test_invalid_patterns_are_rejected_clearly(pattern: str, message: str) -> None:
    with pytest.raises(PatternError) as info:
        compile_pattern(pattern)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(PatternError):
        matches(pattern, "a.b")


@pytest.mark.parametrize("pattern", [None, 1, b"a.b", ["a", "b"]])
def test_non_string_patterns_are_rejected(pattern: Any) -> None:
    with pytest.raises(PatternError) as info:
        compile_pattern(pattern)
    assert "pattern must be a string" in str(info.value)
    assert type(pattern).__name__ in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab.* \t", min_size=0, max_size=10))
def test_compile_pattern_accepts_exactly_the_valid_grammar(text: str) -> None:
    segments = text.split(".")
    valid = all(seg in ("*", "**") or re.fullmatch(r"[^\s.*]+", seg) for seg in segments)
    if valid:
        assert compile_pattern(text).text == text
    else:
        with pytest.raises(PatternError):
            compile_pattern(text)


def test_memoized_matcher_answers_like_the_pattern_and_stays_bounded() -> None:
    calls: list[str] = []
    pattern = compile_pattern("order.*")

    def match(name: str) -> bool:
        calls.append(name)
        return pattern.matches(name)

    check = memoized(match, size=3)
    assert [check(n) for n in ("order.a", "order.a", "user.a", "order.a")] == [
        True, True, False, True,
    ]  # fmt: skip
    assert calls == ["order.a", "user.a"], "each name is matched once while it is remembered"
    for n in ("a", "b", "c", "d"):
        check(n)
    check("order.a")
    assert calls[-1] == "order.a", "a full memo starts over instead of growing"


def test_a_bare_star_is_every_event_on_the_index_and_compiles_like_double_star() -> None:
    compiled = compile_pattern("*")
    assert compiled.text == "*"  # shown as the user wrote it
    assert compiled.segments == compile_pattern("**").segments
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add(compiled, "all")
    assert [index.match(n) for n in ("a", "a.b", "a.b.c")] == [("all",)] * 3
    assert index.remove(compile_pattern("*"), "all")
    assert index.match("a.b") == ()
