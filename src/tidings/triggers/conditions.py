"""The condition language of triggers: a small, safe expression compiled once into closures.

``compile_condition('data.amount >= 1000 and registry == "identity"')`` parses the text (never
with Python's ``eval``, ``exec`` or ``ast``) into a tree of plain Python closures, so evaluating
it against an event costs about a microsecond. The grammar, in EBNF, is in docs/triggers.md.

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

import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from tidings.event import Event

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

MAX_LENGTH: Final = 4096  # characters of condition text
MAX_DEPTH: Final = 32  # nesting of parentheses, `not` and lists
MAX_LIST: Final = 1000  # items of a list literal
MAX_PATH: Final = 32  # steps of one path
MAX_REGEX: Final = 512  # characters of a `matches` pattern
MAX_MATCH_INPUT: Final = 65536  # characters `matches` reads from a value

KEYWORDS: Final = frozenset(
    {"and", "or", "not", "in", "exists", "true", "false", "null"}
    | {"startswith", "endswith", "contains", "matches"}
)
_STRING_OPS: Final = ("startswith", "endswith", "contains", "matches")
_COMPARISONS: Final = ("==", "!=", "<", "<=", ">", ">=")

# Envelope attributes a path may start with (CloudEvents wire names map onto them); any other
# first name is an extension attribute (chain_id, registry, block_number, ...).
_ENVELOPE: Final = frozenset(
    {"id", "source", "type", "specversion", "time", "subject", "datacontenttype"}
    | {"dataschema", "correlation_id", "causation_id", "aggregate_id", "aggregate_type"}
    | {"aggregate_version", "tenant_id", "user_id", "session_id", "request_id", "trace_id"}
    | {"metadata", "extensions"}
)
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


class ConditionRuntimeError(Exception):
    """A condition met a value of the wrong type: ``path`` held ``found``, ``expected`` another
    (e.g. ``data.amount > 5`` where amount is a string)."""

    def __init__(self, message: str, *, path: str, found: str, expected: str) -> None:
        self.path = path
        self.found = found
        self.expected = expected
        super().__init__(message)


class _Missing:
    """The value of a path that leads nowhere."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_MISSING: Final = _Missing()

Getter = Callable[[Event], Any]
Test = Callable[[Event], bool]


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
class _Lit:
    value: Any
    pos: int
    raw: str


@dataclass(frozen=True, slots=True)
class _Path:
    root: str
    steps: tuple[str | int, ...]
    text: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Exists:
    path: _Path


@dataclass(frozen=True, slots=True)
class _Binary:
    op: str  # a comparison, "in", "not in" or a string operator
    left: _Lit | _Path
    right: _Lit | _Path
    pos: int
    regex: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class _Truth:
    value: _Lit | _Path


@dataclass(frozen=True, slots=True)
class _Not:
    inner: _Node


@dataclass(frozen=True, slots=True)
class _BoolOp:
    op: str  # and / or
    items: tuple[_Node, ...]


_Node = _Exists | _Binary | _Truth | _Not | _BoolOp


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

    def parse(self) -> _Node:
        node = self.or_expr()
        if self.tok.kind != "end":
            self.unexpected("'and', 'or' or the end of the condition")
        return node

    def or_expr(self) -> _Node:
        items = [self.and_expr()]
        while self.tok.is_word("or"):
            self.next()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else _BoolOp("or", tuple(items))

    def and_expr(self) -> _Node:
        items = [self.not_expr()]
        while self.tok.is_word("and"):
            self.next()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else _BoolOp("and", tuple(items))

    def not_expr(self) -> _Node:
        if self.tok.is_word("not"):
            self.next()
            self.enter()
            inner = self.not_expr()
            self.depth -= 1
            return _Not(inner)
        return self.predicate()

    def predicate(self) -> _Node:
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
            return _Exists(path)
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
            if not isinstance(left, _Path):
                self.fail("'exists' needs a path before it", tok.pos)
            return _Exists(left)
        if isinstance(left, _Lit) and not isinstance(left.value, bool):
            self.fail(f"expected a condition, got {left.raw} alone", left.pos)
        return _Truth(left)

    def binary(self, op: str, left: _Lit | _Path, right: _Lit | _Path, pos: int) -> _Binary:
        regex = None
        if op == "matches":
            if not (isinstance(right, _Lit) and isinstance(right.value, str)):
                raw = right.text if isinstance(right, _Path) else right.raw
                self.fail(
                    f"'matches' needs a string literal (a regular expression), not {raw}",
                    right.pos,
                )
            regex = _regex(right, self.text)
        if isinstance(left, _Lit) and isinstance(right, _Lit):
            self.fail(f"'{op}' compares two constants; one side must be a path", pos)
        return _Binary(op, left, right, pos, regex)

    def value(self) -> _Lit | _Path:
        tok = self.tok
        if tok.kind in ("num", "str"):
            self.next()
            return _Lit(tok.value, tok.pos, tok.raw)
        if tok.kind == "name" and tok.value in ("true", "false", "null"):
            self.next()
            return _Lit({"true": True, "false": False, "null": None}[tok.value], tok.pos, tok.raw)
        if tok.is_op("["):
            return self.list_literal()
        if not (tok.is_op("$") or (tok.kind == "name" and tok.value not in KEYWORDS)):
            self.unexpected("a value (a path, number, string, list, true, false or null)")
        return self.path()

    def list_literal(self) -> _Lit:
        start = self.next()
        self.enter()
        items: list[Any] = []
        while not self.tok.is_op("]"):
            if items:
                if not self.tok.is_op(","):
                    self.unexpected("',' or ']' in the list")
                self.next()
            item = self.value()
            if isinstance(item, _Path):
                self.fail("a list holds constants only, not paths", item.pos)
            items.append(item.value)
            if len(items) > MAX_LIST:
                self.fail(f"list longer than {MAX_LIST} items", item.pos)
        end = self.next()
        self.depth -= 1
        return _Lit(items, start.pos, self.text[start.pos : end.pos + 1])

    def path(self) -> _Path:
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
        return _Path(root, tuple(steps), text, start)


# --- regular expressions --------------------------------------------------------------------

_BACKREF = re.compile(r"\\[1-9]|\(\?P=")


def _regex(lit: _Lit, text: str) -> re.Pattern[str]:
    """Compile a `matches` pattern, refusing what can take exponential time: backreferences
    and a repeated group that itself repeats (``(a+)+``)."""
    source: str = lit.value
    if len(source) > MAX_REGEX:
        raise ConditionError(
            f"regular expression longer than {MAX_REGEX} characters", lit.pos, text
        )
    if _BACKREF.search(source):
        raise ConditionError("backreferences are not allowed in 'matches'", lit.pos, text)
    if _nested_repeat(source):
        raise ConditionError(
            "a repeated group containing a repetition (like (a+)+) is not allowed",
            lit.pos,
            text,
            "it can take exponential time; rewrite it without the nesting",
        )
    try:
        return re.compile(source)
    except re.error as exc:
        raise ConditionError(f"bad regular expression: {exc.msg}", lit.pos, text) from None


def _nested_repeat(source: str) -> bool:
    stack: list[bool] = []  # per open group: does it contain a repetition?
    i, n, in_class = 0, len(source), False
    while i < n:
        char = source[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if source[i + 1 : i + 2] == "]":
                i += 1
        elif char == "(":
            stack.append(False)
        elif char == ")" and stack:
            inner = stack.pop()
            repeated = source[i + 1 : i + 2] in ("*", "+", "{")
            if inner and repeated:
                return True
            if stack and (inner or repeated):
                stack[-1] = True
        elif char in "*+{" and stack:
            stack[-1] = True
        i += 1
    return False


# --- compiling to closures ------------------------------------------------------------------


def _kind(value: Any) -> str:
    """The language's name for the type of ``value``."""
    if value is _MISSING:
        return "absent"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _eq(a: Any, b: Any) -> bool:
    """Equality without surprises across types: numbers compare by value, booleans are not
    numbers, a string never equals a number."""
    ta, tb = type(a), type(b)
    if ta is tb:
        return bool(a == b)
    if _is_num(a) and _is_num(b):
        return bool(a == b)
    if isinstance(a, str) and isinstance(b, str):
        return str(a) == str(b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) and isinstance(b, bool):
        return bool(a) == bool(b)
    return False


def _member_key(value: Any) -> Any:
    """A set key under which ``_eq`` values meet: booleans apart from 1 and 0."""
    return ("bool", value) if isinstance(value, bool) else value


def _data_root(event: Event) -> Any:
    if event.__data_fields__:
        return event.payload()
    data = event.data
    return _MISSING if data is None else data


def _step(value: Any, key: str | int) -> Any:
    if isinstance(key, str):
        if type(value) is dict:
            return value.get(key, _MISSING)
        if isinstance(value, dict):
            return value.get(key, _MISSING)
        fields = getattr(type(value), "__struct_fields__", None)  # nested msgspec Structs
        if fields is not None and key in fields:
            return getattr(value, key)
        return _MISSING
    if isinstance(value, list | tuple) and -len(value) <= key < len(value):
        return value[key]
    return _MISSING


def _getter(path: _Path) -> Getter:
    root, steps = path.root, path.steps
    first: Getter
    if root == "data":
        if steps and isinstance(steps[0], str):
            key = steps[0]
            steps = steps[1:]

            def data_key(event: Event) -> Any:
                fields = event.__data_fields__
                if fields:
                    return getattr(event, key) if key in fields else _MISSING
                data = event.data
                if type(data) is dict:
                    return data.get(key, _MISSING)
                return _step(data, key)

            first = data_key
        else:
            first = _data_root
    elif root == "time":

        def time(event: Event) -> Any:
            return event.time.isoformat()

        first = time
    elif root in _ENVELOPE:

        def attribute(event: Event) -> Any:
            value = getattr(event, root)
            return _MISSING if value is None else value

        first = attribute
    else:
        # CloudEvents extension names have no underscore: chain_id also reads chainid.
        alias = root.replace("_", "")

        def extension(event: Event) -> Any:
            ext = event.extensions
            if ext is None:
                return _MISSING
            value = ext.get(root, _MISSING)
            return ext.get(alias, _MISSING) if value is _MISSING else value

        first = extension

    if not steps:
        return first
    if len(steps) == 1:
        only = steps[0]

        def one(event: Event) -> Any:
            value = first(event)
            return _MISSING if value is _MISSING else _step(value, only)

        return one

    def walk(event: Event) -> Any:
        value = first(event)
        for key in steps:
            if value is _MISSING:
                return value
            value = _step(value, key)
        return value

    return walk


def _side(node: _Lit | _Path) -> tuple[Getter | None, Any, str]:
    """(getter or None, constant, how the side is named in an error)."""
    if isinstance(node, _Path):
        return _getter(node), None, node.text
    return None, node.value, node.raw


def _mismatch(expr: str, side: str, found: Any, expected: str) -> ConditionRuntimeError:
    kind = _kind(found)
    return ConditionRuntimeError(
        f"{expr}: {side} is {kind}, expected {expected}", path=side, found=kind, expected=expected
    )


_ORDER: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_SCALARS: Final = (str, int, float, bool, type(None))
_NUMBERS: Final = (int, float)


def _equality(op: str, lget: Getter | None, lconst: Any, rget: Getter | None, rconst: Any) -> Test:
    want = op == "=="
    if rget is None and lget is not None:
        const, ctype = rconst, type(rconst)
        if ctype in _SCALARS:

            def eq_scalar(event: Event) -> bool:
                value = lget(event)
                if type(value) is ctype:
                    return (value == const) is want
                if value is _MISSING:
                    return False
                return _eq(value, const) is want

            return eq_scalar

        def eq_const(event: Event) -> bool:
            value = lget(event)
            return False if value is _MISSING else _eq(value, const) is want

        return eq_const

    def eq(event: Event) -> bool:
        left = lconst if lget is None else lget(event)
        right = rconst if rget is None else rget(event)
        if left is _MISSING or right is _MISSING:
            return False
        return _eq(left, right) is want

    return eq


def _ordering(
    node: _Binary, lget: Getter | None, lconst: Any, rget: Getter | None, rconst: Any
) -> Test:
    op, compare = node.op, _ORDER[node.op]
    lname, rname = _name(node.left), _name(node.right)
    expr = f"{lname} {op} {rname}"
    for get, const, name in ((lget, lconst, lname), (rget, rconst, rname)):
        if get is None and not (_is_num(const) or isinstance(const, str)):
            raise ConditionError(f"'{op}' compares numbers or strings, not {name}", node.pos)
    if rget is None and lget is not None:
        const = rconst
        wanted = _NUMBERS if _is_num(const) else (str,)
        expected = f"{'a number' if _is_num(const) else 'a string'} to compare with {rname}"

        def order_const(event: Event) -> bool:
            value = lget(event)
            if type(value) in wanted:
                return bool(compare(value, const))
            if value is _MISSING:
                return False
            if isinstance(value, wanted) and not isinstance(value, bool):
                return bool(compare(value, const))
            raise _mismatch(expr, lname, value, expected)

        return order_const

    def order(event: Event) -> bool:
        left = lconst if lget is None else lget(event)
        right = rconst if rget is None else rget(event)
        if left is _MISSING or right is _MISSING:
            return False
        if _is_num(left):
            if _is_num(right):
                return bool(compare(left, right))
            raise _mismatch(expr, rname, right, f"a number, as {lname} is")
        if isinstance(left, str):
            if isinstance(right, str):
                return bool(compare(left, right))
            raise _mismatch(expr, rname, right, f"a string, as {lname} is")
        raise _mismatch(expr, lname, left, "a number or a string")

    return order


def _membership(
    node: _Binary, lget: Getter | None, lconst: Any, rget: Getter | None, rconst: Any
) -> Test:
    op = node.op
    want = op == "in"
    lname, rname = _name(node.left), _name(node.right)
    expr = f"{lname} {op} {rname}"
    if rget is None and not isinstance(rconst, list | str):
        raise ConditionError(f"'{op}' needs a list or a string on its right, not {rname}", node.pos)
    if rget is None and lget is not None and isinstance(rconst, list):
        items: list[Any] = rconst
        keys: set[Any] = set()
        rest: list[Any] = []
        for item in items:
            if isinstance(item, _SCALARS):
                keys.add(_member_key(item))
            else:
                rest.append(item)

        def in_list(event: Event) -> bool:
            value = lget(event)
            if value is _MISSING:
                return False
            if isinstance(value, _SCALARS):
                hit = _member_key(value) in keys
            else:
                hit = any(_eq(value, item) for item in rest)
            return hit is want

        return in_list

    def member(event: Event) -> bool:
        left = lconst if lget is None else lget(event)
        right = rconst if rget is None else rget(event)
        if left is _MISSING or right is _MISSING:
            return False
        if isinstance(right, list | tuple):
            hit = any(_eq(left, item) for item in right)
        elif isinstance(right, str):
            if not isinstance(left, str):
                raise _mismatch(expr, lname, left, f"a string, as {rname} is")
            hit = left in right
        elif isinstance(right, dict):
            hit = isinstance(left, str) and left in right
        else:
            raise _mismatch(expr, rname, right, "a list, a string or an object")
        return hit is want

    return member


def _text_op(
    node: _Binary, lget: Getter | None, lconst: Any, rget: Getter | None, rconst: Any
) -> Test:
    op = node.op
    lname, rname = _name(node.left), _name(node.right)
    expr = f"{lname} {op} {rname}"

    if op == "matches":
        regex = node.regex
        assert regex is not None and lget is not None

        def match(event: Event) -> bool:
            value = lget(event)
            if type(value) is not str:
                if value is _MISSING:
                    return False
                if not isinstance(value, str):
                    raise _mismatch(expr, lname, value, "a string")
            if len(value) > MAX_MATCH_INPUT:
                raise ConditionRuntimeError(
                    f"{expr}: {lname} is {len(value)} characters, more than the "
                    f"{MAX_MATCH_INPUT} 'matches' reads",
                    path=lname,
                    found="a string",
                    expected=f"a string of at most {MAX_MATCH_INPUT} characters",
                )
            return regex.search(value) is not None

        return match

    if op == "contains":

        def contains(event: Event) -> bool:
            left = lconst if lget is None else lget(event)
            right = rconst if rget is None else rget(event)
            if left is _MISSING or right is _MISSING:
                return False
            if isinstance(left, str):
                if isinstance(right, str):
                    return right in left
                raise _mismatch(expr, rname, right, f"a string, as {lname} is")
            if isinstance(left, list | tuple):
                return any(_eq(item, right) for item in left)
            raise _mismatch(expr, lname, left, "a string or a list")

        return contains

    starts = op == "startswith"

    def affix(event: Event) -> bool:
        left = lconst if lget is None else lget(event)
        right = rconst if rget is None else rget(event)
        if left is _MISSING or right is _MISSING:
            return False
        if not isinstance(left, str):
            raise _mismatch(expr, lname, left, "a string")
        if not isinstance(right, str):
            raise _mismatch(expr, rname, right, "a string")
        return left.startswith(right) if starts else left.endswith(right)

    return affix


def _name(node: _Lit | _Path) -> str:
    return node.text if isinstance(node, _Path) else node.raw


def _binary(node: _Binary) -> Test:
    lget, lconst, _ = _side(node.left)
    rget, rconst, _ = _side(node.right)
    if node.op in ("==", "!="):
        return _equality(node.op, lget, lconst, rget, rconst)
    if node.op in _ORDER:
        return _ordering(node, lget, lconst, rget, rconst)
    if node.op in ("in", "not in"):
        return _membership(node, lget, lconst, rget, rconst)
    return _text_op(node, lget, lconst, rget, rconst)


def _compile(node: _Node) -> Test:
    if isinstance(node, _BoolOp):
        tests = tuple(_compile(item) for item in node.items)
        if len(tests) == 2:
            a, b = tests
            if node.op == "and":
                return lambda event: a(event) and b(event)
            return lambda event: a(event) or b(event)
        if node.op == "and":
            return lambda event: all(test(event) for test in tests)
        return lambda event: any(test(event) for test in tests)
    if isinstance(node, _Not):
        inner = _compile(node.inner)
        return lambda event: not inner(event)
    if isinstance(node, _Exists):
        get = _getter(node.path)
        return lambda event: get(event) is not _MISSING
    if isinstance(node, _Truth):
        value = node.value
        if isinstance(value, _Lit):
            const = bool(value.value)
            return lambda event: const
        get, name = _getter(value), value.text

        def truth(event: Event) -> bool:
            found = get(event)
            if found is True or found is False:
                return found
            if found is _MISSING:
                return False
            raise ConditionRuntimeError(
                f"{name}: is {_kind(found)}, expected true or false (or compare it: {name} == ...)",
                path=name,
                found=_kind(found),
                expected="a boolean",
            )

        return truth
    return _binary(node)


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
    if not isinstance(text, str):
        raise ConditionError(f"a condition is text, not {_kind(text)}", 0, "")
    if len(text) > MAX_LENGTH:
        raise ConditionError(
            f"condition is {len(text)} characters, longer than the {MAX_LENGTH} allowed",
            MAX_LENGTH,
            text,
        )
    if not text.strip():
        raise ConditionError("condition is empty; leave it out to match every event", 0, text)
    parser = _Parser(text)
    tree = parser.parse()
    try:
        test = _compile(tree)
    except ConditionError as exc:
        raise ConditionError(exc.message, exc.position, text, exc.hint) from None
    return Condition(text, test, tuple(parser.paths))
