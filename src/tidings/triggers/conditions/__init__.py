"""The condition language of triggers: a small, safe expression compiled once into closures.

``compile_condition('data.amount >= 1000 and registry == "identity"')`` parses the text (never
with Python's ``eval``, ``exec`` or ``ast``) into a tree of plain Python closures, so evaluating
it against an event costs about a microsecond. ``syntax`` reads the text into a tree (the
grammar, in EBNF, is in docs/triggers.md); ``closures`` compiles the tree; ``regex`` bounds
what ``matches`` may cost.

Semantics, chosen so a trigger never fails for a field an event simply lacks:

- a path that leads nowhere (missing key, index out of range, a key into a non-object) is
  *absent*; every comparison with an absent value is false (``!=`` and ``not in`` too), and
  ``exists(path)`` tells absence from ``null``;
- ``==``/``!=`` compare across types without error (``1 == "1"`` is false, ``1 == 1.0`` true);
  ordering (``< <= > >=``) and the string operators need the right types and raise
  ``ConditionRuntimeError`` naming the path and both types otherwise;
- a bad text raises ``ConditionError`` with the 0-based ``position`` and a caret excerpt.
"""

from __future__ import annotations

from tidings.event import Event
from tidings.triggers.conditions.closures import ConditionRuntimeError, Test, compile_tree
from tidings.triggers.conditions.regex import MAX_MATCH_INPUT, MAX_REGEX
from tidings.triggers.conditions.syntax import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_LIST,
    ConditionError,
    parse,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_LIST",
    "MAX_MATCH_INPUT",
    "MAX_REGEX",
    "Condition",
    "ConditionError",
    "ConditionRuntimeError",
    "compile_condition",
]


class Condition:
    """A compiled condition: ``evaluate(event)`` is true when the event satisfies ``text``."""

    __slots__ = ("paths", "test", "text")

    def __init__(self, text: str, test: Test, paths: tuple[str, ...]) -> None:
        self.text = text
        #: every path the condition reads, as written canonically (``data.items[0].sku``)
        self.paths = paths
        #: the compiled closure itself, for hot loops (``TriggerIndex.evaluate``): like
        #: ``evaluate`` but a value nested past the interpreter's limit raises RecursionError
        self.test = test

    def evaluate(self, event: Event) -> bool:
        """True or false; ``ConditionRuntimeError`` when a value has the wrong type."""
        try:
            return self.test(event)
        except RecursionError:
            raise self.too_deep() from None

    def too_deep(self) -> ConditionRuntimeError:
        """The error for a value nested too deeply to compare (a RecursionError of ``test``)."""
        return ConditionRuntimeError(
            f"{self.text!r}: a value is nested too deeply to compare",
            path="",
            found="a deeply nested value",
            expected="a value nested less deeply",
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"


def compile_condition(text: str) -> Condition:
    """Parse and compile ``text`` once; raise ``ConditionError`` with the position if it is
    not a valid condition."""
    tree, paths = parse(text)
    try:
        test = compile_tree(tree)
    except ConditionError as exc:
        raise ConditionError(exc.message, exc.position, text, exc.hint) from None
    return Condition(text, test, paths)
