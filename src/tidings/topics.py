"""Glob patterns over dot-separated event types, and an index that matches them cheaply.

``*`` matches exactly one segment, ``**`` matches zero or more, anything else matches itself.
A pattern that is exactly ``*`` means every event (as ``**`` does): the seeds' configs write it
for "all events", and a bare ``*`` that matched only dotless types would silently drop the rest.
The index keeps wildcard patterns in a segment trie and caches the answer per event type, so a
publish costs one dict lookup however many subscriptions exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Pattern", "PatternError", "SubscriptionIndex", "compile_pattern", "matches"]

T = TypeVar("T")

_SEGMENT_RE = re.compile(r"^[^\s.*]+$")


class PatternError(ValueError):
    """A subscription pattern is malformed; the message says where and what is allowed."""


@dataclass(frozen=True, slots=True)
class Pattern:
    """A validated pattern: its text and its segments."""

    text: str
    segments: tuple[str, ...]

    @property
    def is_exact(self) -> bool:
        return "*" not in self.segments and "**" not in self.segments

    def matches(self, name: str) -> bool:
        return _match(self.segments, 0, name.split("."), 0)


def memoized(match: Callable[[str], bool], size: int = 10_000) -> Callable[[str], bool]:
    """``match`` remembered per name: consumers test the few types of a namespace once per
    message, so a dict hit beats walking the pattern. Cleared when it holds ``size`` names."""
    seen: dict[str, bool] = {}

    def check(name: str) -> bool:
        hit = seen.get(name)
        if hit is None:
            if len(seen) >= size:
                seen.clear()
            hit = seen[name] = match(name)
        return hit

    return check


def compile_pattern(pattern: str) -> Pattern:
    """Validate ``pattern`` and split it into segments; raise PatternError naming the problem."""
    if not isinstance(pattern, str):
        raise PatternError(f"pattern must be a string, got {type(pattern).__name__}")
    if not pattern:
        raise PatternError("pattern is empty; use '**' to match every event type")
    if any(ch.isspace() for ch in pattern):
        raise PatternError(f"pattern {pattern!r} contains whitespace; event types never do")
    if pattern == "*":
        return Pattern(pattern, ("**",))  # "all events", as the seeds write it
    segments = pattern.split(".")
    for index, seg in enumerate(segments):
        if seg in ("*", "**"):
            continue
        if not seg:
            raise PatternError(
                f"pattern {pattern!r} has an empty segment at position {index + 1}; "
                "segments are separated by single dots ('a.b', 'a.*', 'a.**')"
            )
        if "*" in seg:
            raise PatternError(
                f"pattern {pattern!r}: segment {seg!r} mixes '*' with text; a wildcard is a "
                "whole segment: '*' matches one segment, '**' any number"
            )
        if not _SEGMENT_RE.match(seg):
            raise PatternError(f"pattern {pattern!r}: segment {seg!r} is not allowed")
    # '**.**' matches what '**' matches; collapse runs so the trie stays small.
    collapsed: list[str] = []
    for seg in segments:
        if seg == "**" and collapsed and collapsed[-1] == "**":
            continue
        collapsed.append(seg)
    return Pattern(pattern, tuple(collapsed))


def _match(pat: tuple[str, ...], pi: int, name: list[str], ni: int) -> bool:
    while pi < len(pat):
        seg = pat[pi]
        if seg == "**":
            if pi + 1 == len(pat):
                return True
            return any(_match(pat, pi + 1, name, k) for k in range(ni, len(name) + 1))
        if ni >= len(name) or (seg != "*" and seg != name[ni]):
            return False
        pi += 1
        ni += 1
    return ni == len(name)


def matches(pattern: str, name: str) -> bool:
    """True when event type ``name`` matches ``pattern``."""
    return compile_pattern(pattern).matches(name)


@dataclass(slots=True)
class _Node(Generic[T]):
    children: dict[str, _Node[T]] = field(default_factory=dict)
    items: list[tuple[int, T]] = field(default_factory=list)


class SubscriptionIndex(Generic[T]):
    """Maps patterns to items; ``match(name)`` returns items in insertion order.

    Exact patterns live in a dict, wildcard patterns in a segment trie; answers are cached per
    event type (bounded) and the cache is dropped whenever a subscription changes.
    """

    def __init__(self, cache_size: int = 10_000) -> None:
        self._exact: dict[str, list[tuple[int, T]]] = {}
        self._root: _Node[T] = _Node()
        self._wild = 0
        self._seq = 0
        self._cache: dict[str, tuple[T, ...]] = {}
        self._cache_size = cache_size

    def __len__(self) -> int:
        return sum(len(v) for v in self._exact.values()) + self._wild

    def add(self, pattern: Pattern, item: T) -> None:
        self._seq += 1
        entry = (self._seq, item)
        if pattern.is_exact:
            self._exact.setdefault(pattern.text, []).append(entry)
        else:
            node = self._root
            for seg in pattern.segments:
                node = node.children.setdefault(seg, _Node())
            node.items.append(entry)
            self._wild += 1
        self._cache.clear()

    def remove(self, pattern: Pattern, item: T) -> bool:
        """Remove one registration of ``item`` under ``pattern``; False if it was not there."""
        if pattern.is_exact:
            entries = self._exact.get(pattern.text, [])
        else:
            node: _Node[T] | None = self._root
            for seg in pattern.segments:
                node = node.children.get(seg) if node else None
            entries = node.items if node else []
        for i, (_, it) in enumerate(entries):
            if it is item:
                del entries[i]
                if not pattern.is_exact:
                    self._wild -= 1
                elif not entries:
                    del self._exact[pattern.text]
                self._cache.clear()
                return True
        return False

    def match(self, name: str) -> tuple[T, ...]:
        """Items whose pattern matches ``name``, in the order they were added."""
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        found: dict[int, T] = {}
        exact = self._exact.get(name)
        if exact:
            found.update(exact)
        if self._wild:
            self._walk(self._root, name.split("."), 0, found)
        result = tuple(item for _, item in sorted(found.items(), key=lambda kv: kv[0]))
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[name] = result
        return result

    def _walk(self, node: _Node[T], segs: list[str], i: int, found: dict[int, T]) -> None:
        children = node.children
        dstar = children.get("**")
        if dstar is not None:
            # '**' may swallow zero or more of the remaining segments.
            for k in range(i, len(segs) + 1):
                self._walk(dstar, segs, k, found)
        if i == len(segs):
            if node.items:
                found.update(node.items)
            return
        lit = children.get(segs[i])
        if lit is not None:
            self._walk(lit, segs, i + 1, found)
        star = children.get("*")
        if star is not None:
            self._walk(star, segs, i + 1, found)

    def items(self) -> Iterable[T]:
        for entries in self._exact.values():
            for _, item in entries:
                yield item
        stack = [self._root]
        while stack:
            node = stack.pop()
            for _, item in node.items:
                yield item
            stack.extend(node.children.values())
