"""``tidings config check`` with triggers carrying credentials: neither the summary, nor
``--json``, nor the error of a bad definition shows one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tidings.cli import app

GOOD_URL = "https://ops:s3cret-good@hooks.example.com/x"


def _write(tmp_path: Path, actions: list[dict[str, Any]]) -> Path:
    path = tmp_path / "tidings.yaml"
    path.write_text(yaml.safe_dump({
        "store": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
        "triggers": [{"id": "t", "pattern": "a.*", "actions": actions}],
    }))  # fmt: skip
    return path


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):  # the developer's own settings stay out
        if name.upper().startswith("TIDINGS_"):
            monkeypatch.delenv(name)
    return CliRunner()


def test_config_check_shows_no_credential(runner: CliRunner, tmp_path: Path) -> None:
    path = _write(tmp_path, [{"type": "webhook", "url": GOOD_URL},
                             {"type": "log", "message": "x"}])  # fmt: skip
    for extra in ([], ["--json"]):
        result = runner.invoke(app, ["config", "check", str(path), *extra])
        assert result.exit_code == 0, result.output
        assert "s3cret" not in result.output, result.output


@pytest.mark.parametrize(
    "action",
    [
        {"type": "webhook", "url": "ftp://ops:s3cret-bad@hooks.example.com/x"},
        {"type": "webhook", "url": "https://ops:s3cret-bad@/x"},
        {"type": "webhook", "url": GOOD_URL, "endpoint": "shop"},
    ],
)
def test_a_bad_definition_is_named_without_its_credential(
    runner: CliRunner, tmp_path: Path, action: dict[str, Any]
) -> None:
    path = _write(tmp_path, [action])
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code != 0, result.output
    assert "triggers[0].actions[0]" in result.output, result.output
    assert "s3cret" not in result.output, result.output
    assert "Traceback" not in result.output, result.output
