"""The text of a condition: tokens, the grammar (recursive descent, depth bounded), the tree,
and the checks that keep a ``matches`` pattern from taking exponential time.

``parse(text)`` returns the tree ``closures.compile_tree`` turns into Python closures; every
mistake is a ``ConditionError`` with the 0-based position. The grammar, in EBNF, is in
docs/triggers.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from tidings.triggers.conditions.regex import Matcher, RegexRefused, compile_regex

__all__ = [
    "KEYWORDS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_LIST",
    "MAX_PATH",
    "Binary",
    "BoolOp",
    "ConditionError",
    "Const",
    "Exists",
    "Node",
    "Not",
    "PathRef",
    "Truth",
    "parse",
]

MAX_LENGTH: Final = 4096  # characters of condition text
MAX_DEPTH: Final = 32  # nesting of parentheses, `not` and lists
MAX_LIST: Final = 1000  # items of a list literal
MAX_PATH: Final = 32  # steps of one path

KEYWORDS: Final = frozenset(
    {"and", "or", "not", "in", "exists", "true", "false", "null"}
    | {"startswith", "endswith", "contains", "matches"}
)
_STRING_OPS: Final = ("startswith", "endswith", "contains", "matches")
_COMPARISONS: Final = ("==", "!=", "<", "<=", ">", ">=")

# CloudEvents wire names of envelope attributes, read as the attribute.
_WIRE: Final = {
    "correlationid": "correlation_id",
    "causationid": "causation_id",
    "aggregateid": "aggregate_id",
    "aggregatetype": "aggregate_type",
    "aggregateversion": "aggregate_version",
    "tenantid": "tenant_id",
    "userid": "user_id",
    "sessionid": "session_id",
    "requestid": "request_id",
    "traceid": "trace_id",
}


class ConditionError(ValueError):
    """The text of a condition is not valid: ``message`` at ``position`` (0-based)."""

    def __init__(self, message: str, position: int, text: str = "", hint: str = "") -> None:
        self.message = message
        self.position = position
        self.text = text
        self.hint = hint
        where = f"{message} at position {position}"
        super().__init__(f"{where}; {hint}" if hint else where)

    def excerpt(self, width: int = 72) -> str:
        """Two lines: the text around the position, and a caret under it."""
        text = self.text.replace("\n", " ").replace("\t", " ")
        start = max(0, self.position - width // 2)
        end = min(len(text), start + width)
        start = max(0, end - width)
        left = "..." if start > 0 else ""
        right = "..." if end < len(text) else ""
        line = f"{left}{text[start:end]}{right}"
        return f"{line}\n{' ' * (len(left) + self.position - start)}^"


# --- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<num>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)(?![A-Za-z0-9_])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|\.|\$)
  | (?P<quote>["'])
    """,
    re.VERBOSE,
)
_ESCAPES: Final = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "/": "/",
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # num, str, name, op, end
    value: Any
    pos: int
    raw: str

    def describe(self) -> str:
        if self.kind == "end":
            return "end of condition"
        raw = self.raw if len(self.raw) <= 20 else self.raw[:17] + "..."
        return repr(raw) if self.kind in ("op", "name") else raw

    def is_op(self, op: str) -> bool:
        return self.kind == "op" and self.value == op

    def is_word(self, word: str) -> bool:
        return self.kind == "name" and self.value == word


def _tokens(text: str) -> Iterator[_Token]:
    pos, end = 0, len(text)
    while pos < end:
        found = _TOKEN.match(text, pos)
        if found is None:
            char = text[pos]
            hint = ""
            if char in "&|!=":
                hint = "write 'and', 'or', 'not', '==', '!='"
            elif char == "-":
                hint = "a '-' must start a number; there is no arithmetic"
            raise ConditionError(f"unexpected character {char!r}", pos, text, hint)
        kind = found.lastgroup
        if kind == "space":
            pos = found.end()
        elif kind == "quote":
            value, after = _string(text, pos)
            yield _Token("str", value, pos, text[pos:after])
            pos = after
        elif kind == "num":
            raw = found.group()
            number: float = float(raw) if any(c in raw for c in ".eE") else int(raw)
            if number in (float("inf"), float("-inf")):
                raise ConditionError(f"number {raw} is out of range", pos, text)
            yield _Token("num", number, pos, raw)
            pos = found.end()
        else:
            raw = found.group()
            yield _Token(kind or "op", raw, pos, raw)
            pos = found.end()
    yield _Token("end", None, end, "")


def _string(text: str, start: int) -> tuple[str, int]:
    quote, pos = text[start], start + 1
    out: list[str] = []
    while pos < len(text):
        char = text[pos]
        if char == quote:
            return "".join(out), pos + 1
        if char == "\\":
            nxt = text[pos + 1 : pos + 2]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                pos += 2
                continue
            if nxt == "u":
                digits = text[pos + 2 : pos + 6]
                if len(digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in digits):
                    out.append(chr(int(digits, 16)))
                    pos += 6
                    continue
                raise ConditionError("bad escape: \\u needs 4 hex digits", pos, text)
            shown = repr("\\" + nxt) if nxt else "'\\' at the end"
            raise ConditionError(
                f"unknown escape {shown} (known: \\\\ \\' \\\" \\n \\t \\r \\b \\f \\/ \\uXXXX)",
                pos,
                text,
            )
        out.append(char)
        pos += 1
    raise ConditionError(f"unterminated string: no closing {quote}", start, text)


# --- the tree -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Const:
    value: Any
    pos: int
    raw: str


@dataclass(frozen=True, slots=True)
class PathRef:
    root: str
    steps: tuple[str | int, ...]
    text: str
    pos: int


@dataclass(frozen=True, slots=True)
class Exists:
    path: PathRef


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # a comparison, "in", "not in" or a string operator
    left: Const | PathRef
    right: Const | PathRef
    pos: int
    regex: Matcher | None = None


@dataclass(frozen=True, slots=True)
class Truth:
    value: Const | PathRef


@dataclass(frozen=True, slots=True)
class Not:
    inner: Node


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # and / or
    items: tuple[Node, ...]


Node = Exists | Binary | Truth | Not | BoolOp


class _Parser:
    """Recursive descent over the token list; depth is bounded, so recursion is too."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = list(_tokens(text))
        self.i = 0
        self.depth = 0
        self.paths: dict[str, None] = {}

    # helpers

    @property
    def tok(self) -> _Token:
        return self.toks[self.i]

    def next(self) -> _Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, message: str, pos: int | None = None, hint: str = "") -> NoReturn:
        raise ConditionError(message, self.tok.pos if pos is None else pos, self.text, hint)

    def unexpected(self, expected: str) -> NoReturn:
        self.fail(f"unexpected {self.tok.describe()}", hint=f"expected {expected}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"nested too deeply (more than {MAX_DEPTH} levels)")

    # grammar

    def parse(self) -> Node:
        node = self.or_expr()
        if self.tok.kind != "end":
            self.unexpected("'and', 'or' or the end of the condition")
        return node

    def or_expr(self) -> Node:
        items = [self.and_expr()]
        while self.tok.is_word("or"):
            self.next()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_expr(self) -> Node:
        items = [self.not_expr()]
        while self.tok.is_word("and"):
            self.next()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def not_expr(self) -> Node:
        if self.tok.is_word("not"):
            self.next()
            self.enter()
            inner = self.not_expr()
            self.depth -= 1
            return Not(inner)
        return self.predicate()

    def predicate(self) -> Node:
        tok = self.tok
        if tok.is_op("("):
            self.next()
            self.enter()
            node = self.or_expr()
            self.depth -= 1
            if not self.tok.is_op(")"):
                self.unexpected("')' to close the '(' at position " + str(tok.pos))
            self.next()
            return node
        if tok.is_word("exists") and self.toks[self.i + 1].is_op("("):
            self.next()
            self.next()
            path = self.path()
            if not self.tok.is_op(")"):
                self.unexpected("')' after the path of exists(...)")
            self.next()
            return Exists(path)
        left = self.value()
        tok = self.tok
        if tok.kind == "op" and tok.value in _COMPARISONS:
            self.next()
            return self.binary(tok.value, left, self.value(), tok.pos)
        if tok.is_word("in"):
            self.next()
            return self.binary("in", left, self.value(), tok.pos)
        if tok.is_word("not"):
            self.next()
            if not self.tok.is_word("in"):
                self.unexpected("'in' after 'not' (as in: x not in [1, 2])")
            self.next()
            return self.binary("not in", left, self.value(), tok.pos)
        if tok.kind == "name" and tok.value in _STRING_OPS:
            self.next()
            return self.binary(tok.value, left, self.value(), tok.pos)
        if tok.is_word("exists"):
            self.next()
            if not isinstance(left, PathRef):
                self.fail("'exists' needs a path before it", tok.pos)
            return Exists(left)
        if isinstance(left, Const) and not isinstance(left.value, bool):
            self.fail(f"expected a condition, got {left.raw} alone", left.pos)
        return Truth(left)

    def binary(self, op: str, left: Const | PathRef, right: Const | PathRef, pos: int) -> Binary:
        regex = None
        if op == "matches":
            if not (isinstance(right, Const) and isinstance(right.value, str)):
                raw = right.text if isinstance(right, PathRef) else right.raw
                self.fail(
                    f"'matches' needs a string literal (a regular expression), not {raw}",
                    right.pos,
                )
            regex = _regex(right, self.text)
        if isinstance(left, Const) and isinstance(right, Const):
            self.fail(f"'{op}' compares two constants; one side must be a path", pos)
        return Binary(op, left, right, pos, regex)

    def value(self) -> Const | PathRef:
        tok = self.tok
        if tok.kind in ("num", "str"):
            self.next()
            return Const(tok.value, tok.pos, tok.raw)
        if tok.kind == "name" and tok.value in ("true", "false", "null"):
            self.next()
            return Const({"true": True, "false": False, "null": None}[tok.value], tok.pos, tok.raw)
        if tok.is_op("["):
            return self.list_literal()
        if not (tok.is_op("$") or (tok.kind == "name" and tok.value not in KEYWORDS)):
            self.unexpected("a value (a path, number, string, list, true, false or null)")
        return self.path()

    def list_literal(self) -> Const:
        start = self.next()
        self.enter()
        items: list[Any] = []
        while not self.tok.is_op("]"):
            if items:
                if not self.tok.is_op(","):
                    self.unexpected("',' or ']' in the list")
                self.next()
            item = self.value()
            if isinstance(item, PathRef):
                self.fail("a list holds constants only, not paths", item.pos)
            items.append(item.value)
            if len(items) > MAX_LIST:
                self.fail(f"list longer than {MAX_LIST} items", item.pos)
        end = self.next()
        self.depth -= 1
        return Const(items, start.pos, self.text[start.pos : end.pos + 1])

    def path(self) -> PathRef:
        start = self.tok.pos
        if self.tok.is_op("$"):
            self.next()
            if not self.tok.is_op("."):
                self.unexpected("'.' after '$' (as in $.data.amount)")
            self.next()
        tok = self.tok
        if tok.kind != "name" or tok.value in KEYWORDS:
            self.unexpected("a name (data, type, subject, source, an extension such as chain_id)")
        self.next()
        root: str = _WIRE.get(tok.value, tok.value)
        steps: list[str | int] = []
        text = root
        while True:
            if self.tok.is_op("."):
                self.next()
                key = self.tok
                if key.kind != "name":
                    self.unexpected("a key after '.' (write data[\"odd key\"] for other keys)")
                self.next()
                steps.append(key.value)
                text += f".{key.value}"
            elif self.tok.is_op("["):
                self.next()
                key = self.tok
                if key.kind == "str" or (key.kind == "num" and isinstance(key.value, int)):
                    self.next()
                else:
                    self.unexpected("an integer index or a quoted key inside [ ]")
                if not self.tok.is_op("]"):
                    self.unexpected("']'")
                self.next()
                steps.append(key.value)
                text += f"[{key.value!r}]" if isinstance(key.value, str) else f"[{key.value}]"
            else:
                break
            if len(steps) > MAX_PATH:
                self.fail(f"path longer than {MAX_PATH} steps", start)
        self.paths[text] = None
        return PathRef(root, tuple(steps), text, start)


# --- regular expressions --------------------------------------------------------------------


def _regex(lit: Const, text: str) -> Matcher:
    """Compile a `matches` pattern once (regex.py bounds its matching time)."""
    try:
        return compile_regex(lit.value)
    except RegexRefused as exc:
        raise ConditionError(exc.message, lit.pos, text, exc.hint) from None


def parse(text: str) -> tuple[Node, tuple[str, ...]]:
    """The tree of ``text`` and the paths it reads; ``ConditionError`` if it is not valid."""
    if not isinstance(text, str):
        raise ConditionError(f"a condition is text, not {type(text).__name__}", 0, "")
    if len(text) > MAX_LENGTH:
        raise ConditionError(
            f"condition is {len(text)} characters, longer than the {MAX_LENGTH} allowed",
            MAX_LENGTH,
            text,
        )
    if not text.strip():
        raise ConditionError("condition is empty; leave it out to match every event", 0, text)
    parser = _Parser(text)
    return parser.parse(), tuple(parser.paths)
