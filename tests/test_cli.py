"""The ``tidings`` command: --version and ``config check``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tidings
from tidings.cli import app, main
from tidings.config import ConfigError

SEED_002 = """\
event_broker:
  enabled: true
  provider: memory  # memory, redis, nats, database
  mode: async       # sync, async
  worker_count: 10
  buffer_size: 1000
  instance_id: "${HOSTNAME}"
  retry_policy:
    max_retries: 3
    initial_delay: 1s
    max_delay: 30s
    backoff_factor: 2.0  # Exponential backoff
"""


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # The developer's own TIDINGS_* variables must not leak into these tests.
    for name in list(os.environ):
        if name.upper().startswith("TIDINGS_"):
            monkeypatch.delenv(name)
    return CliRunner()


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def tidings_exe() -> str:
    """The console script installed next to this interpreter (the .venv's bin dir)."""
    exe = Path(sys.executable).parent / "tidings"
    if not exe.exists():
        pytest.fail(f"console script not installed at {exe}; run pip install -e .")
    return str(exe)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TIDINGS_")}
    env.update(extra)
    return env


# --- --version --------------------------------------------------------------------------


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"tidings {tidings.__version__}\n"


def test_installed_console_script_prints_version() -> None:
    proc = subprocess.run(
        [tidings_exe(), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"tidings {tidings.__version__}"


def test_no_arguments_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert "config" in result.output
    assert "Usage" in result.output


# --- config check -----------------------------------------------------------------------


def test_config_check_ok_prints_a_summary(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  mode: async\n  workers: 3\n  close_timeout: 500ms\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: OK"
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:]}
    assert rows["bus.mode"] == "async"
    assert rows["bus.workers"] == "3"
    assert rows["bus.close_timeout"] == "500ms"
    assert rows["bus.retry"] == "-"
    assert result.stderr == ""


def row(key: str, value: str, out: str) -> bool:
    """A settings-table row, whatever the column width."""
    return re.search(rf"^\s*{re.escape(key)}\s+{re.escape(value)}$", out, re.MULTILINE) is not None


def test_config_check_seed_002(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, SEED_002)
    result = runner.invoke(app, ["config", "check", str(path)], env={"HOSTNAME": "api-1"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert row("bus.workers", "10", out)
    assert row("bus.retry.max_delay", "30s", out)
    assert row("instance_id", "api-1", out)
    assert row("event_broker.provider", "memory", out)


def test_config_check_json(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  retry:\n    max_delay: 1m\n")
    result = runner.invoke(app, ["config", "check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["bus"]["retry"]["max_delay"] == 60.0
    assert data["bus"]["workers"] == 4


def test_config_check_applies_env_overrides(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "bus: {workers: 3}\n")
    result = runner.invoke(
        app, ["config", "check", str(path), "--json"], env={"TIDINGS_BUS__WORKERS": "9"}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bus"]["workers"] == 9


def test_config_check_file_from_option_or_env(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "bus: {workers: 5}\n")
    result = runner.invoke(app, ["--config", str(path), "config", "check"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: OK")
    result = runner.invoke(app, ["config", "check"], env={"TIDINGS_CONFIG": str(path)})
    assert result.exit_code == 0, result.output
    assert row("bus.workers", "5", result.stdout)


def test_config_check_masks_secrets(runner: CliRunner, tmp_path: Path) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    path = write(
        tmp_path,
        "server: {api_key: key-hunter2}\n"
        f"events: {{webhooks: {{a: {{url: 'http://x:1/h', secret: {secret}}}}}}}\n",
    )
    for args in (["config", "check", str(path)], ["config", "check", str(path), "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "hunter2" not in result.stdout and secret not in result.stdout


def test_config_check_without_any_file_checks_defaults(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("settings (no config file): OK")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bus:\n  workers: many\n", "bus.workers: expected an integer >= 1, got 'many'"),
        ("bus:\n  wrokers: 2\n", "bus.wrokers: unknown key (did you mean 'workers'?)"),
        ("instance_id: ${NOT_SET_ANYWHERE}\n", "instance_id: environment variable NOT_SET"),
        ("bus:\n  close_timeout: soon\n", "bus.close_timeout: expected a duration"),
    ],
)
def test_config_check_errors_exit_2(
    runner: CliRunner, tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {path}: {expected}"), result.stderr
    assert "Traceback" not in result.output


def test_config_check_yaml_error_names_line(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  workers: 3\n    mode: async\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}:3:")


def test_config_check_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "absent.yaml: config file not found" in result.stderr


def test_config_check_bad_env_names_the_variable(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "check"], env={"TIDINGS_BUS__MODE": "fast"})
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: environment variable TIDINGS_BUS__MODE: bus.mode: expected one of"
    )


def test_main_turns_user_errors_into_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @app.command("explode-for-test", hidden=True)
    def explode() -> None:
        raise ConfigError("x.yaml", "bus.mode", "expected something")

    try:
        with pytest.raises(SystemExit) as info:
            main(["explode-for-test"])
    finally:
        app.registered_commands.pop()
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: x.yaml: bus.mode: expected something\n"
    assert "Traceback" not in captured.err


def test_installed_script_error_is_red_line_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  workers: many\n")
    proc = subprocess.run(
        [tidings_exe(), "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=clean_env(FORCE_COLOR="1", TERM="xterm-256color"),
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "\x1b[31m" in proc.stderr  # red
    assert f"{path}: bus.workers: expected an integer >= 1, got 'many'" in proc.stderr
    assert "Traceback" not in proc.stderr
