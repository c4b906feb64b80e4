"""A condition's tree compiled into plain Python closures: one per operator, specialised for
the common ``path OP constant`` shape, so evaluating a condition costs well under a microsecond.

The semantics live here: a path that leads nowhere is absent and every comparison with it is
false; ``==`` compares across types without error; ordering and the string operators raise
``ConditionRuntimeError`` naming the path and both types.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Final

from tidings.event import Event
from tidings.triggers.conditions.regex import MAX_MATCH_INPUT
from tidings.triggers.conditions.syntax import (
    Binary,
    BoolOp,
    ConditionError,
    Const,
    Exists,
    Node,
    Not,
    PathRef,
    Truth,
)

__all__ = ["ConditionRuntimeError", "Getter", "Test", "compile_tree"]

# Envelope attributes a path may start with; any other first name is an extension attribute
# (chain_id, registry, block_number, ...).
_ENVELOPE: Final = frozenset(
    {"id", "source", "type", "specversion", "time", "subject", "datacontenttype"}
    | {"dataschema", "correlation_id", "causation_id", "aggregate_id", "aggregate_type"}
    | {"aggregate_version", "tenant_id", "user_id", "session_id", "request_id", "trace_id"}
    | {"metadata", "extensions"}
)


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


_CONTAINERS: Final = (list, tuple, dict)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _eq(a: Any, b: Any) -> bool:
    """Equality without surprises across types, at every depth: numbers compare by value,
    booleans are not numbers, a string never equals a number."""
    ta, tb = type(a), type(b)
    if ta is tb and ta not in _CONTAINERS:
        return bool(a == b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and bool(a) == bool(b)
    if _is_num(a) and _is_num(b):
        return bool(a == b)
    if isinstance(a, str) and isinstance(b, str):
        return str(a) == str(b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return len(a) == len(b) and all(k in b and _eq(v, b[k]) for k, v in a.items())
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


def _getter(path: PathRef) -> Getter:
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
        # CloudEvents extension names have no underscore (tidings.event refuses one), so
        # chain_id reads chainid; the name as written is the fallback.
        alias = root.replace("_", "")

        def extension(event: Event) -> Any:
            ext = event.extensions
            if ext is None:
                return _MISSING
            return ext.get(alias, _MISSING)

        def extension_or_written(event: Event) -> Any:
            ext = event.extensions
            if ext is None:
                return _MISSING
            value = ext.get(alias, _MISSING)
            return ext.get(root, _MISSING) if value is _MISSING else value

        first = extension if alias == root else extension_or_written

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
            kind = type(value)
            if kind is dict and type(key) is str:  # the usual steps, without a call
                value = value.get(key, _MISSING)
            elif kind is list and type(key) is int and -len(value) <= key < len(value):
                value = value[key]
            elif value is _MISSING:
                return value
            else:
                value = _step(value, key)
        return value

    return walk


def _side(node: Const | PathRef) -> tuple[Getter | None, Any, str]:
    """(getter or None, constant, how the side is named in an error)."""
    if isinstance(node, PathRef):
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
    node: Binary, lget: Getter | None, lconst: Any, rget: Getter | None, rconst: Any
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
                return compare(value, const)  # type: ignore[no-any-return]
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
    node: Binary, lget: Getter | None, lconst: Any, rget: Getter | None, rconst: Any
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
    node: Binary, lget: Getter | None, lconst: Any, rget: Getter | None, rconst: Any
) -> Test:
    op = node.op
    lname, rname = _name(node.left), _name(node.right)
    expr = f"{lname} {op} {rname}"

    if op == "matches":
        assert node.regex is not None and lget is not None
        find = node.regex.find

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
            return find(value) is not None

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
    if lget is not None and rget is None and isinstance(rconst, str):
        # the common shape, `path startswith "text"`: the method looked up once
        affix_of = str.startswith if starts else str.endswith
        const: str = rconst

        def affix_const(event: Event) -> bool:
            value = lget(event)
            if type(value) is str:
                return affix_of(value, const)
            if value is _MISSING:
                return False
            if isinstance(value, str):
                return affix_of(value, const)
            raise _mismatch(expr, lname, value, "a string")

        return affix_const

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


def _name(node: Const | PathRef) -> str:
    return node.text if isinstance(node, PathRef) else node.raw


def _binary(node: Binary) -> Test:
    lget, lconst, _ = _side(node.left)
    rget, rconst, _ = _side(node.right)
    if node.op in ("==", "!="):
        return _equality(node.op, lget, lconst, rget, rconst)
    if node.op in _ORDER:
        return _ordering(node, lget, lconst, rget, rconst)
    if node.op in ("in", "not in"):
        return _membership(node, lget, lconst, rget, rconst)
    return _text_op(node, lget, lconst, rget, rconst)


def compile_tree(node: Node) -> Test:
    if isinstance(node, BoolOp):
        tests = tuple(compile_tree(item) for item in node.items)
        if len(tests) == 2:
            a, b = tests
            if node.op == "and":
                return lambda event: a(event) and b(event)
            return lambda event: a(event) or b(event)
        if node.op == "and":
            return lambda event: all(test(event) for test in tests)
        return lambda event: any(test(event) for test in tests)
    if isinstance(node, Not):
        inner = compile_tree(node.inner)
        return lambda event: not inner(event)
    if isinstance(node, Exists):
        get = _getter(node.path)
        return lambda event: get(event) is not _MISSING
    if isinstance(node, Truth):
        value = node.value
        if isinstance(value, Const):
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
