"""``matches``: a regular expression compiled once, whose matching time is bounded.

Python's ``re`` backtracks: ``(a|a)*b`` takes seconds on 25 characters, ``a*b`` seconds on
65,536. So a pattern runs on ``re`` (fast: ~0.2 µs a search) only when its shape keeps the work
polynomial and small on values of at most ``MAX_MATCH_INPUT`` characters: no repetition inside
a repetition, no alternation inside a repetition, no backreference, and at most two unbounded
repetitions counting the start positions a search tries (one, unless the pattern starts with
``^``). Any other pattern runs on RE2 (``pip install tidings[re2]``: linear time, ~8 µs a search)
or, without it, is refused with the rule it breaks.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from typing import Any, Final

__all__ = ["MAX_MATCH_INPUT", "MAX_REGEX", "Matcher", "RegexRefused", "compile_regex"]

MAX_REGEX: Final = 512  # characters of a pattern
MAX_MATCH_INPUT: Final = 4096  # characters of a value a pattern is matched against
_UNBOUNDED: Final = 100  # a repetition allowing more than this counts as unbounded
_MAX_DEGREE: Final = 2  # unbounded repetitions + an unanchored search's start positions


class RegexRefused(ValueError):
    """The pattern cannot be used: ``message`` and a ``hint`` on what to write instead."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class Matcher:
    """A compiled pattern: ``find(text)`` returns a match or None; ``engine`` is re or re2."""

    __slots__ = ("engine", "find", "source")

    def __init__(self, source: str, find: Callable[[str], object], engine: str) -> None:
        self.source = source
        self.find = find
        self.engine = engine


def _parser() -> Any:
    return importlib.import_module("re._parser")  # the stdlib's own parser (3.11+)


def _shape(items: Any, in_repeat: bool, found: dict[str, int]) -> str | None:
    """Walk ``re``'s parse tree; the first rule broken, else None. Counts unbounded
    repetitions into ``found``."""
    p = _parser()
    for op, av in items:
        if op in (p.MAX_REPEAT, p.MIN_REPEAT, p.POSSESSIVE_REPEAT):
            _low, high, sub = av
            if in_repeat and (high == p.MAXREPEAT or high > 1):
                return "a repetition inside a repetition (like (a+)+)"
            if high == p.MAXREPEAT or high > _UNBOUNDED:
                found["unbounded"] += 1
            problem = _shape(sub, in_repeat or high > 1, found)
        elif op == p.BRANCH:
            if in_repeat:
                return "an alternation inside a repetition (like (a|ab)*)"
            problem = next((x for x in (_shape(alt, False, found) for alt in av[1]) if x), None)
        elif op in (p.GROUPREF, p.GROUPREF_EXISTS):
            return "a backreference"
        elif op == p.SUBPATTERN:
            problem = _shape(av[3], in_repeat, found)
        elif op in (p.ASSERT, p.ASSERT_NOT):
            problem = _shape(av[1], in_repeat, found)
        elif op == p.ATOMIC_GROUP:
            problem = _shape(av, in_repeat, found)
        else:
            problem = None
        if problem:
            return problem
    return None


def _re2() -> Any | None:
    try:
        return importlib.import_module("re2")
    except ImportError:
        return None


def compile_regex(source: str) -> Matcher:
    """The matcher of ``source``, on ``re`` when its shape is safe there, else on RE2;
    ``RegexRefused`` when it is malformed, too long, or unsafe without RE2."""
    if len(source) > MAX_REGEX:
        raise RegexRefused(f"regular expression longer than {MAX_REGEX} characters")
    try:
        with warnings.catch_warnings():
            # "possible nested set" and the like: a pattern whose meaning may change
            warnings.simplefilter("error", FutureWarning)
            compiled = re.compile(source)
            tree = _parser().parse(source)
    except re.error as exc:
        raise RegexRefused(f"bad regular expression: {exc.msg}") from None
    except (FutureWarning, OverflowError, ValueError, RecursionError) as exc:
        raise RegexRefused(f"bad regular expression: {exc}") from None
    found = {"unbounded": 0}
    problem = _shape(list(tree), False, found)
    if problem is None:
        p = _parser()
        anchored = bool(tree) and tree[0] in ((p.AT, p.AT_BEGINNING), (p.AT, p.AT_BEGINNING_STRING))
        degree = found["unbounded"] + (0 if anchored else 1)
        if degree > _MAX_DEGREE:
            problem = f"{found['unbounded']} unbounded repetitions (*, +, {{n,}})" + (
                "" if anchored else " in a search not anchored with ^"
            )
    if problem is None:
        return Matcher(source, compiled.search, "re")
    if "backreference" in problem:
        raise RegexRefused("backreferences are not allowed in 'matches'")
    re2 = _re2()
    if re2 is None:
        raise RegexRefused(
            f"this regular expression has {problem}, which can take very long to match",
            "simplify it (anchor it with ^, use fewer * and +), or install RE2 for any "
            "pattern: pip install tidings[re2]",
        )
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own parse errors on stderr
    try:
        return Matcher(source, re2.compile(source, options).search, "re2")
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise RegexRefused(
            f"this regular expression has {problem}, and RE2 cannot run it: {reason}",
            "simplify it: RE2 has no lookarounds or backreferences",
        ) from None
