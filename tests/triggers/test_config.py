"""The ``triggers`` and ``processor`` settings: defaults, refusals naming the key, secrets kept
out of output, and ``tidings config check`` on the docs page's YAML and on broken copies."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidings.cli import app
from tidings.config import ConfigError, ProcessorSettings, load
from tidings.triggers.definitions import parse_triggers

DOCS = Path(__file__).resolve().parents[2] / "docs" / "triggers.md"


def docs_yaml() -> str:
    """The YAML the docs page writes to triggers.yaml."""
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(r"<!-- file: triggers.yaml -->\n```yaml\n(.*?)^```", text, re.S | re.M)
    assert found, "docs/triggers.md lost its triggers.yaml block"
    return found.group(1)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.upper().startswith("TIDINGS_"):
            monkeypatch.delenv(name)
    return CliRunner()


def _write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load(env={})
    assert settings.triggers == []
    assert settings.processor == ProcessorSettings()
    assert (settings.processor.queue, settings.processor.workers) == ("store", 4)
    assert (settings.processor.partitions, settings.processor.partition_by) == (1, "chain_id")
    assert settings.processor.retry.policy().max_retries == 3
    assert settings.processor.start == "end"  # enabling triggers does not run the history


def test_the_docs_yaml_loads_and_parses(tmp_path: Path) -> None:
    settings = load(_write(tmp_path, docs_yaml()), env={})
    triggers = parse_triggers(settings.triggers)
    assert [t.id for t in triggers] == ["big-registration", "bad-feedback", "everything-on-sepolia"]
    assert settings.processor.retry.policy().max_delay == 300.0


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("processor: {workers: 0}", "processor.workers", "expected an integer from 1 to 1000"),
        ("processor: {partitions: -1}", "processor.partitions", "from 1 to 4096"),
        ("processor: {queue: amqp://x}", "processor.queue", "expected 'store' or a redis://"),
        ("processor: {queue: 'redis://'}", "processor.queue", "with a host"),
        ("processor: {partition_by: Chain-Id}", "processor.partition_by", "extension name"),
        ("processor: {start: now}", "processor.start", "expected end or beginning, got 'now'"),
        ("processor: {start: 0}", "processor.start", "expected"),
        ("processor: {partiton_by: x}", "processor.partiton_by", "did you mean 'partition_by'"),
        (
            "processor: {retry: {initial_delay: 10s, max_delay: 1s}}",
            "processor.retry.max_delay",
            "expected a duration >= initial_delay",
        ),
        ("triggers: 5", "triggers", "expected a list"),
        ("triggers: [5]", "triggers[0]", "expected a mapping"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(_write(tmp_path, text), env={})
    assert (info.value.key, problem in info.value.problem) == (key, True), str(info.value)


def test_redis_queue_password_and_secret_options_are_redacted(tmp_path: Path) -> None:
    text = """
processor: {queue: "redis://:hunter2@localhost:6379/0"}
triggers:
  - id: a
    pattern: a.*
    actions:
      - {type: email, to: x@example.com, password: hunter2, smtp: "smtp://u:hunter2@h"}
      - {type: webhook, url: "https://h/x", headers: {Authorization: hunter2}, secret: hunter2}
"""
    settings = load(_write(tmp_path, text), env={})
    assert settings.triggers[0]["actions"][0]["password"] == "hunter2"  # the real value is kept
    shown = json.dumps(settings.to_builtins())
    assert "hunter2" not in shown, shown
    assert '"password": "***"' in shown and "redis://:***@localhost" in shown


def test_config_check_prints_the_triggers(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", str(_write(tmp_path, docs_yaml()))])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.strip().startswith("triggers"))
    assert row.split(None, 1)[1] == (
        "3: big-registration, bad-feedback, everything-on-sepolia (disabled)"
    )
    assert re.search(r"processor\.queue\s+store", result.output)
    as_json = runner.invoke(app, ["config", "check", "--json", str(tmp_path / "t.yaml")])
    assert json.loads(as_json.stdout)["triggers"][0]["id"] == "big-registration"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'data.score < 20 and not (data.comment matches "(?i)test")',
            "data.score < )",
            "triggers[1].condition: unexpected ')' at position 13",
        ),
        (
            "type: log\n",
            "type: sms\n",
            "triggers[0].actions[1].type: unknown action type 'sms' (known: ",
        ),
        (
            "body: ",
            "bodi: ",
            "triggers[1].actions[0].bodi: ",
        ),
        ("id: bad-feedback", "id: big-registration", "triggers[1].id: duplicate trigger id"),
        ("pattern: identity.*", "pattern: identity.*x", "triggers[0].pattern: pattern"),
        ("enabled: false", "enabld: false", "triggers[2].enabld: unknown key"),
    ],
)
def test_config_check_refuses_a_bad_definition(
    runner: CliRunner, tmp_path: Path, old: str, new: str, message: str
) -> None:
    text = docs_yaml()
    assert old in text
    path = _write(tmp_path, text.replace(old, new, 1), "broken.yaml")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2, result.output
    first = result.output.splitlines()[0]
    assert first.startswith(f"error: {path}: {message}"), result.output
    if "position" in message:
        line, caret = result.output.splitlines()[1:3]
        assert line.strip() == "data.score < )" and caret.index("^") - line.index("d") == 13
