"""The README and docs/ are tests: every snippet runs, and every command parses, as written.

- Each page's ```python blocks run in order, in one namespace, in a fresh interpreter whose
  working directory is a temporary one (tests/docs_runner.py). A block with a top-level
  ``await`` runs on the page's event loop, as in ``python -m asyncio``. Blocks that name a
  service URL (redis://, nats://, amqp://, postgresql://) run against the loopback service.
- ``<!-- file: NAME -->`` on the line before a fence writes that block to NAME in the working
  directory first (a config file that a snippet then loads).
- ``<!-- not-run: reason -->`` on the line before a fence skips a block that cannot run as
  written (a placeholder host); it must still compile. Keep such marks rare.
- Every ``tidings ...`` line of a ```sh / bash / console block is parsed by the CLI: the
  command, its options and arguments must exist (nothing is run).
- A page in ``RUN_ELSEWHERE`` has its Python blocks run by the one test named there instead
  (once, not twice), which reads them with ``blocks()`` and checks more than that they run.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import typer

from tests.conftest import require_service
from tidings.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
MARK = re.compile(r"<!--\s*(not-run|file):\s*(.*?)\s*-->")
SHELLS = {"sh", "bash", "shell", "console"}
# A URL scheme in a snippet means it talks to that service on loopback.
SERVICES = {
    "redis://": ("Redis", 6379),
    "nats://": ("NATS", 4222),
    "amqp://": ("RabbitMQ", 5672),
    "postgresql://": ("PostgreSQL", 5432),
}
PAGE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    mark: tuple[str, str] | None  # ("not-run", reason) or ("file", name)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rpartition("\n")[2]
        mark = MARK.search(before)
        found.append(
            Block(
                page,
                text.count("\n", 0, match.start()) + 1,
                match.group(1).lower(),
                match.group(2),
                (mark.group(1), mark.group(2)) if mark else None,
            )
        )
    return found


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# A page whose Python blocks one other test runs as written and checks further (docs/metrics.md
# serves /metrics: that test moves the port to a free one and scrapes it), so they run once.
RUN_ELSEWHERE = {
    "docs/metrics.md": "tests/test_prometheus.py::test_docs_snippets_run_and_serve_the_families",
}
PYTHON_PAGES = [
    p for p in PAGES if any(b.lang == "python" for b in blocks(p)) and _id(p) not in RUN_ELSEWHERE
]
SHELL_PAGES = [p for p in PAGES if any(b.lang in SHELLS for b in blocks(p))]


def test_pages_are_found() -> None:
    assert ROOT / "README.md" in PYTHON_PAGES and len(PYTHON_PAGES) >= 10, PYTHON_PAGES


@pytest.mark.parametrize(("page", "runner"), RUN_ELSEWHERE.items())
def test_a_page_run_elsewhere_has_its_runner(page: str, runner: str) -> None:
    path, _, name = runner.partition("::")
    assert any(b.lang == "python" for b in blocks(ROOT / page)), page
    assert f"def {name}(" in (ROOT / path).read_text(encoding="utf-8"), runner


# --- Python snippets ------------------------------------------------------------------------


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_id)
def test_python_snippets_run_as_written(page: Path, tmp_path: Path) -> None:
    to_run: list[dict[str, str]] = []
    for block in blocks(page):
        if block.mark and block.mark[0] == "file":
            name = Path(block.mark[1])
            assert not name.is_absolute() and ".." not in name.parts, block.where
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(block.code, encoding="utf-8")
            continue
        if block.lang != "python":
            continue
        # Even a block that is not run must be valid Python (top-level await allowed).
        compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if block.mark and block.mark[0] == "not-run":
            assert block.mark[1], f"{block.where}: say why it cannot run: <!-- not-run: why -->"
            continue
        for scheme, (name, port) in SERVICES.items():
            if scheme in block.code:
                require_service(name, "127.0.0.1", port)
        to_run.append({"where": block.where, "code": block.code})
    if not to_run:
        pytest.skip(f"every Python block of {_id(page)} is marked not-run")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "docs_runner.py")],
        input=json.dumps(to_run),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=PAGE_TIMEOUT,
        env=_clean_env(),
        check=False,
    )
    assert proc.returncode == 0, f"{_id(page)}:\n{proc.stderr[-6000:]}\n{proc.stdout[-2000:]}"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TIDINGS_")}
    return {**env, "PYTHONPATH": str(ROOT / "src")}


# --- tidings command lines --------------------------------------------------------------------


def command_lines(block: Block) -> list[str]:
    """The ``tidings ...`` commands of a shell block, continuation lines joined."""
    text = block.code.replace("\\\n", " ")
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if block.lang == "console":
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)  # VAR=value before the command
        if words and Path(words[0]).name == "tidings":
            lines.append(shlex.join(words[1:]))
    return lines


# Typer >= 0.20 carries its own copy of click: its errors derive from typer.TyperException.
USAGE_ERRORS: tuple[type[Exception], ...] = (
    click.ClickException,
    getattr(typer, "TyperException", click.ClickException),
)
EXITS: tuple[type[Exception], ...] = (click.exceptions.Exit, typer.Exit)


def parse_only(args: list[str]) -> None:
    """Parse ``tidings ARGS`` as the CLI would, down to the last subcommand, without running
    it. Raises one of USAGE_ERRORS on an unknown command or option or a missing argument."""
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("tidings", list(args))
    while hasattr(command, "resolve_command"):  # a group: find the subcommand, parse its args
        protected = getattr(ctx, "_protected_args", None)
        if protected is None:
            protected = ctx.protected_args
        name, sub, rest = command.resolve_command(ctx, [*protected, *ctx.args])
        assert sub is not None and name is not None
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)


@pytest.mark.parametrize("page", SHELL_PAGES, ids=_id)
def test_tidings_command_lines_parse(page: Path) -> None:
    checked: list[str] = []
    problems: list[str] = []
    for block in blocks(page):
        if block.lang not in SHELLS or (block.mark and block.mark[0] == "not-run"):
            continue
        for line in command_lines(block):
            checked.append(line)
            try:
                parse_only(shlex.split(line))
            except EXITS:
                pass  # --version, --help: parsed, then they exit
            except USAGE_ERRORS as exc:
                problems.append(f"{block.where}: `tidings {line}`: {exc.format_message()}")
    assert not problems, "\n".join(problems)
    if not checked:
        pytest.skip(f"no tidings command in the shell blocks of {_id(page)}")


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        ("--version", True),
        ("config check tidings.yaml", True),
        ("--config x.yaml serve --port 8001", True),
        ("dlq retry --all", True),
        ("dlq list --endpoint", False),  # option without its value
        ("dlq lst", False),  # no such command
        ("serve --no-such-option", False),
        ("migrate", False),  # missing URL argument
    ],
)
def test_parse_only_tells_good_from_bad(line: str, ok: bool) -> None:
    try:
        parse_only(shlex.split(line))
        parsed = True
    except EXITS:
        parsed = True
    except USAGE_ERRORS:
        parsed = False
    assert parsed is ok


def test_command_lines_join_continuations_and_skip_output() -> None:
    block = Block(
        ROOT / "README.md",
        1,
        "console",
        "$ TIDINGS_X=1 tidings config \\\n    check a.yaml  # comment\na.yaml: OK\n$ echo hi\n",
        None,
    )
    assert command_lines(block) == ["config check a.yaml"]
