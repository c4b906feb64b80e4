"""Credentials never leave through a URL: ``redact_url`` and the places that show URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidings.cli import app
from tidings.store import StoreError, open_store
from tidings.urls import is_secret_name, redact_url

SECRETS = ("hunter2", "ssl-pw", "tok-en", "s3cr3t", "the-key", "sasl-pw", "pw-1")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u@h/db?password=hunter2", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&sslpassword=ssl-pw&application_name=x",
            "postgresql://u@h/db?sslmode=require&sslpassword=***&application_name=x",
        ),
        ("redis://h/0?PASSWORD=hunter2", "redis://h/0?PASSWORD=***"),
        ("nats://h:4222?token=tok-en", "nats://h:4222?token=***"),
        ("amqp://h/?auth=s3cr3t&heartbeat=10", "amqp://h/?auth=***&heartbeat=10"),
        ("kafka://h:9092?sasl_password=sasl-pw", "kafka://h:9092?sasl_password=***"),
        ("http://h/hook?api_key=the-key&x=1", "http://h/hook?api_key=***&x=1"),
        ("http://h/?key=the-key&keepalives=1", "http://h/?key=***&keepalives=1"),
        ("http://h/?X-Auth-Token=tok-en", "http://h/?X-Auth-Token=***"),
        ("http://h/?client_secret=s3cr3t&pwd=pw-1", "http://h/?client_secret=***&pwd=***"),
        ("http://h/?access_key=the-key&passwd=pw-1", "http://h/?access_key=***&passwd=***"),
        ("http://u:hunter2@h/?token=tok-en", "http://u:***@h/?token=***"),
        ("http://h/?pass%77ord=hunter2", "http://h/?pass%77ord=***"),  # percent-encoded name
        ("http://h/?password=", "http://h/?password="),  # nothing to hide
        ("host=db user=app password=hunter2", "host=db user=app password=***"),
        ("host=db password='pw-1 hunter2' port=5", "host=db password=*** port=5"),
    ],
)
def test_redact_url_masks_userinfo_and_credential_parameters(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_names_that_are_secrets() -> None:
    secret = ("password", "sslpassword", "Passwd", "pwd", "TOKEN", "secret", "key", "api_key")
    secret += ("apiKey", "access_key", "sasl_password", "auth", "x-api-token", "db_password")
    for name in secret:
        assert is_secret_name(name), name
    for name in ("sslmode", "keepalives", "monkey", "host", "user", "stream_name", "authsource"):
        assert not is_secret_name(name), name


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nats://tok-en@h:4222", "nats://***@h:4222"),  # a token alone in the userinfo
        ("nats://u:pw-1@h:4222?token=tok-en", "nats://***@h:4222?token=***"),
        ("tls://u:pw-1@[::1]:4222/", "tls://***@[::1]:4222/"),
        ("nats://h:4222?stream=S", "nats://h:4222?stream=S"),  # nothing to hide
    ],
)
def test_redact_url_whole_userinfo_masks_the_user_too(url: str, expected: str) -> None:
    assert redact_url(url, whole_userinfo=True) == expected
    assert redact_url("postgresql://app@db/x") == "postgresql://app@db/x"  # a user stays


def test_store_errors_redact_query_credentials(tmp_path: Path) -> None:
    for url in (
        f"sqlite:///{tmp_path / 'x.db'}?password=hunter2",
        "mongodb://h/db?password=hunter2",
        "host=db password=hunter2",
    ):
        with pytest.raises(StoreError) as info:
            open_store(url)
        assert "hunter2" not in str(info.value), info.value


# --- tidings config check -------------------------------------------------------------------

CONFIG = """\
store:
  url: "postgresql://app:pw-1@db/events?sslmode=require&password=hunter2&sslpassword=ssl-pw"
event_broker:
  provider: redis
  redis:
    host: cache
    password: sasl-pw
    stream_name: "resolvespec:events"
  database:
    url: "postgresql://app:s3cr3t@db/events"
events:
  enabled: true
  endpoints:
    order.*: ["https://hooks.example.com/in?token=tok-en"]
  webhooks:
    w:
      url: "https://x.example.com/hook?api_key=the-key"
"""


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.upper().startswith("TIDINGS_"):
            monkeypatch.delenv(name)
    return CliRunner()


@pytest.mark.parametrize("as_json", [False, True])
def test_config_check_shows_no_credential(runner: CliRunner, tmp_path: Path, as_json: bool) -> None:
    path = tmp_path / "tidings.yaml"
    path.write_text(CONFIG)
    result = runner.invoke(app, ["config", "check", str(path), *(["--json"] if as_json else [])])
    assert result.exit_code == 0, result.output
    leaked = [s for s in SECRETS if s in result.output]
    assert not leaked, result.output
    assert "sslmode=require&password=***&sslpassword=***" in result.output
    assert "resolvespec:events" in result.output  # what is not a secret stays readable


def test_cli_store_message_redacts_the_url(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    env = {"TIDINGS_STORE__URL": f"sqlite:///{missing}?password=hunter2"}
    result = runner.invoke(app, ["dlq", "list"], env=env)
    assert result.exit_code != 0
    assert "hunter2" not in result.output, result.output
