"""The shape of src/tidings: every module imports on its own, no import circles, and the layers
of DESIGN.md hold (what may import what).

The graph is read from the source with ``ast``, so it sees every import: at module level, inside
functions (lazy imports) and under ``TYPE_CHECKING``. A *part* is a top-level module or package
of tidings (``bus``, ``middleware``, ``store``, ``config``, ...); ``tidings`` itself is the root
package, which imports the bus.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import tidings

SRC = Path(tidings.__file__).parent
ROOT = "tidings"

# DESIGN.md, Layout: the ground floor imports nothing of tidings above it. headers, urls and
# clock are ground floor too: config (ground floor) needs the first two, and none imports more.
GROUND = frozenset({"event", "topics", "retry", "transport", "config", "headers", "urls", "clock"})
TOP = frozenset({"server", "cli", "__main__"})  # only these may import server/ and cli/


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _imports(tree: ast.AST) -> Iterator[str]:
    """Every tidings module named by an import anywhere in ``tree`` (``from a import b`` names
    ``a`` and, when it is a module, ``a.b``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            # `from tidings import sqlfiles` imports the module, not what the package exports
            if not all(sub in MODULES for sub in subs):
                yield node.module
            yield from subs
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _runtime_imports(body: Iterable[ast.stmt]) -> Iterator[str]:
    """The imports that run when the module is imported: module level, not in functions or
    classes, not under ``if TYPE_CHECKING``."""
    for node in body:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _runtime_imports(node.body)
            yield from _runtime_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _runtime_imports(block)
            for handler in node.handlers:
                yield from _runtime_imports(handler.body)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            yield from _imports(node)


def _graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(part -> parts it imports, any import) and (module -> modules imported at import time)."""
    parts: dict[str, set[str]] = {}
    modules: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        named = {m for m in _imports(tree) if m in MODULES}
        parts.setdefault(_part(name), set()).update(_part(m) for m in named)
        modules[name] = {m for m in _runtime_imports(tree.body) if m in MODULES} - {name}
    for part, targets in parts.items():
        targets.discard(part)
    return parts, modules


PARTS, RUNTIME = _graphs()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per back edge found by a depth-first walk (empty: the graph is a DAG)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return found


def _reach(start: str) -> set[str]:
    """Every part ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in PARTS.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _path(start: str, goal: str) -> list[str]:
    """The import chain from ``start`` to ``goal``, for the failure message."""
    came: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop(0)
        for nxt in sorted(PARTS.get(node, ())):
            if nxt not in came and nxt != start:
                came[nxt] = node
                todo.append(nxt)
    chain = [goal]
    while chain[-1] != start and chain[-1] in came:
        chain.append(came[chain[-1]])
    return chain[::-1]


def test_the_graph_sees_the_parts() -> None:
    # A walk that read nothing would pass every rule below.
    assert {"bus", "middleware", "store", "transports", "config", "server", "cli"} <= set(PARTS)
    assert "middleware" in PARTS["bus"] and "config" in PARTS["server"]
    assert "tidings.bus.core" in RUNTIME["tidings.bus"]


def test_no_import_circle_between_parts() -> None:
    assert _cycles(PARTS) == [], "parts that import each other (lazy and TYPE_CHECKING included)"


def test_no_import_circle_between_modules() -> None:
    assert _cycles(RUNTIME) == [], "modules that import each other when imported"


def test_the_ground_floor_imports_nothing_above_it() -> None:
    above = {part: sorted(_reach(part) - GROUND) for part in sorted(GROUND & set(PARTS))}
    assert {part: found for part, found in above.items() if found} == {}, [
        _path(part, found[0]) for part, found in above.items() if found
    ]


def test_middleware_store_and_transports_never_import_the_bus() -> None:
    # middleware types against its own SubscriptionInfo; the store hands committed events to
    # any publish callable; transports implement transport.py. ``tidings`` itself imports the
    # bus, so reaching it counts.
    for part in ("middleware", "store", "transports"):
        assert "bus" not in _reach(part), (part, _path(part, "bus"))
        assert ROOT not in _reach(part), (part, _path(part, ROOT))


def test_nothing_below_server_and_cli_imports_them() -> None:
    for part in sorted(set(PARTS) - TOP):
        assert not _reach(part) & {"server", "cli"}, (part, sorted(_reach(part)))


# Every module imported in a fresh interpreter of its own (a fork of one that imported nothing
# of tidings), so no module works only because another was imported first. The libraries
# tidings uses are imported once before forking, which keeps the test at a few seconds.
_IMPORT_EACH = """
import importlib, json, os, sys, traceback
for library in json.loads(sys.argv[2]):
    try:
        importlib.import_module(library)
    except Exception:
        pass  # an optional dependency: the module needing it reports it below
assert not any(m == "tidings" or m.startswith("tidings.") for m in sys.modules)
failed = {}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed[name] = out or f"exit status {status}"
print(json.dumps(failed))
"""


def _libraries() -> list[str]:
    """The top-level names of everything but tidings that tidings imports."""
    found: set[str] = set()
    for path in MODULES.values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
    return sorted(found - {ROOT, "__future__"})


def test_every_module_imports_on_its_own() -> None:
    names = sorted(n for n in MODULES if n != "tidings.__main__")  # that one runs the CLI
    run = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, json.dumps(names), json.dumps(_libraries())],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {}


# --- one name, one thing (issue 10) -------------------------------------------------------


def test_deliveries_and_full_queues_have_one_name_each() -> None:
    import tidings.bus  # noqa: PLC0415
    import tidings.delivery  # noqa: PLC0415
    import tidings.webhooks.queue  # noqa: PLC0415

    assert tidings.delivery.HandlerDelivery is not tidings.webhooks.queue.WebhookDelivery
    assert tidings.bus.BusQueueFull is not tidings.webhooks.queue.WebhookQueueFull
    for module, ambiguous in (
        (tidings.delivery, "Delivery"),
        (tidings.webhooks.queue, "Delivery"),
        (tidings.bus, "QueueFull"),
        (tidings.webhooks.queue, "QueueFull"),
    ):
        assert not hasattr(module, ambiguous), f"{module.__name__}.{ambiguous}"
