"""tidings.config: YAML + TIDINGS_* settings, interpolation, durations, seed files, errors."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import socket
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

import tidings
import tidings.headers
from tidings.config import (
    ConfigError,
    Duration,
    EndpointSettings,
    PayloadFormat,
    RedisBrokerSettings,
    RetrySettings,
    ServerSettings,
    Settings,
    StoreSettings,
    WebhookSettings,
    load,
    parse_duration,
)
from tidings.retry import RetryPolicy
from tidings.webhooks.endpoint import Auth, Endpoint, endpoint_id_for_url, from_settings
from tidings.webhooks.endpoint import PayloadFormat as EndpointPayloadFormat


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error(path: Path | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, env={} if env is None else env)
    return str(info.value)


# --- defaults and the bus section -------------------------------------------------------


def test_no_file_no_env_gives_the_bus_defaults() -> None:
    settings = load(env={})
    assert settings == Settings()
    assert settings.bus_kwargs() == {
        "mode": "inline",
        "workers": 4,
        "buffer_size": 1000,
        "when_full": "block",
        "track_deliveries": False,
        "dead_letter_size": 10_000,
        "close_timeout": 5.0,
        "retry": None,
    }


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, ""), env={}) == Settings()


def test_full_bus_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        instance_id: web-1
        source: /billing
        bus:
          mode: async
          workers: 8
          buffer_size: 64
          when_full: drop
          track_deliveries: true
          dead_letter_size: 0
          close_timeout: 2500ms
          retry:
            max_retries: 5
            initial_delay: 0.5
            max_delay: 1m
            backoff_factor: 3
            jitter: 0.2
        """,
    )
    settings = load(path, env={})
    assert settings.instance_id == "web-1"
    assert settings.source == "/billing"
    kwargs = settings.bus_kwargs()
    assert kwargs["retry"] == RetryPolicy(
        max_retries=5, initial_delay=0.5, max_delay=60.0, backoff_factor=3.0, jitter=0.2
    )
    assert {k: v for k, v in kwargs.items() if k != "retry"} == {
        "mode": "async",
        "workers": 8,
        "buffer_size": 64,
        "when_full": "drop",
        "track_deliveries": True,
        "dead_letter_size": 0,
        "close_timeout": 2.5,
    }
    assert type(kwargs["close_timeout"]) is float


def test_bus_kwargs_build_a_real_bus(tmp_path: Path) -> None:
    path = write(tmp_path, "bus: {mode: async, workers: 2, retry: {max_retries: 1}}\n")
    bus = tidings.Bus(**load(path, env={}).bus_kwargs())
    try:
        assert bus.mode == "async"
        assert bus._pool is not None and len(bus._pool.workers) == 2
    finally:
        bus.close(timeout=1.0)


def test_settings_are_frozen() -> None:
    settings = load(env={})
    with pytest.raises(AttributeError):
        settings.bus.workers = 9  # type: ignore[misc]


def test_to_builtins_gives_plain_seconds(tmp_path: Path) -> None:
    path = write(tmp_path, "bus: {close_timeout: 1m, retry: {max_delay: 2s}}\n")
    data = load(path, env={}).to_builtins()
    assert data["bus"]["close_timeout"] == 60.0
    assert type(data["bus"]["retry"]["max_delay"]) is float


def _tidings_imports(module: typing.Any) -> set[str]:
    source = Path(module.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    return {m for m in imported if m.startswith("tidings")}


def test_config_module_stays_on_the_ground_floor() -> None:
    # The ground floor imports nothing above it; webhooks builds its endpoints from config.
    # tidings.config is a package: what its modules import from outside it is what counts.
    modules = [
        importlib.import_module(f"tidings.config.{info.name}")
        for info in pkgutil.iter_modules(tidings.config.__path__)
    ]
    outside = set().union(*(_tidings_imports(m) for m in [tidings.config, *modules]))
    assert {m for m in outside if not m.startswith("tidings.config")} == {
        "tidings.headers",
        "tidings.retry",
        "tidings.topics",
        "tidings.urls",
    }
    # The header rules are shared with the HTTP API, so they sit on the ground floor too.
    assert _tidings_imports(tidings.headers) == set()
    code = "import sys, tidings.config; print('tidings.webhooks' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


# --- interpolation ----------------------------------------------------------------------


def test_interpolation_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, 'instance_id: "node-${NODE}"\nsource: "${SRC}/x"\n')
    settings = load(path, env={"NODE": "7", "SRC": "/svc"})
    assert settings.instance_id == "node-7"
    assert settings.source == "/svc/x"


def test_interpolation_default_used_when_unset_or_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "instance_id: ${NODE:-local}\nsource: ${SRC:-}\n")
    assert load(path, env={}).instance_id == "local"
    assert load(path, env={"NODE": ""}).instance_id == "local"
    assert load(path, env={"NODE": "n1"}).instance_id == "n1"
    assert load(path, env={}).source == ""


def test_interpolated_numbers_and_booleans_take_the_field_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        bus:
          workers: ${WORKERS:-4}
          track_deliveries: ${TRACK:-false}
          close_timeout: ${CLOSE:-10s}
        """,
    )
    settings = load(path, env={"WORKERS": "12", "TRACK": "true"})
    assert settings.bus.workers == 12
    assert settings.bus.track_deliveries is True
    assert settings.bus.close_timeout == 10.0


def test_dollar_dollar_is_a_literal_dollar(tmp_path: Path) -> None:
    path = write(tmp_path, 'source: "pa$$word ${A} $$${A} cost $5"\n')
    assert load(path, env={"A": "x"}).source == "pa$word x $x cost $5"


def test_missing_variable_names_file_key_path_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  retry:\n    max_delay: ${MAX_DELAY}\n")
    message = error(path)
    assert message.startswith(f"{path}: bus.retry.max_delay: ")
    assert "environment variable MAX_DELAY is not set" in message
    assert "${MAX_DELAY:-default}" in message


def test_missing_variable_inside_a_list_names_the_index(tmp_path: Path) -> None:
    path = write(tmp_path, "event_broker:\n  nats:\n    servers: [a, '${S2}']\n")
    assert f"{path}: event_broker.nats.servers[1]: environment variable S2" in error(path)


def test_malformed_reference_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "source: ${1BAD}\n")
    message = error(path)
    assert message.startswith(f"{path}: source: bad variable reference '${{1BAD}}'")
    assert "$$" in message
    assert "bad variable reference '${OPEN'" in error(write(tmp_path, "source: ${OPEN\n"))


def test_hostname_falls_back_to_the_machine_name(tmp_path: Path) -> None:
    path = write(tmp_path, 'instance_id: "${HOSTNAME}"\n')
    assert load(path, env={}).instance_id == socket.gethostname()
    assert load(path, env={"HOSTNAME": "box"}).instance_id == "box"


def test_keys_and_env_values_are_not_interpolated(tmp_path: Path) -> None:
    settings = load(env={"TIDINGS_SOURCE": "${NOT_EXPANDED}"})
    assert settings.source == "${NOT_EXPANDED}"


# --- environment overrides --------------------------------------------------------------


def test_env_overrides_nest_and_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  mode: inline\n  workers: 2\n")
    settings = load(
        path,
        env={
            "TIDINGS_BUS__MODE": "async",
            "TIDINGS_BUS__WORKERS": "4",
            "TIDINGS_BUS__TRACK_DELIVERIES": "true",
            "TIDINGS_BUS__RETRY__MAX_RETRIES": "7",
            "TIDINGS_BUS__RETRY__JITTER": "0.5",
            "TIDINGS_BUS__CLOSE_TIMEOUT": "250ms",
            "UNRELATED": "ignored",
        },
    )
    assert settings.bus.mode == "async"
    assert settings.bus.workers == 4
    assert isinstance(settings.bus.workers, int)
    assert settings.bus.track_deliveries is True
    assert settings.bus.retry == RetrySettings(max_retries=7, jitter=0.5)
    assert settings.bus.close_timeout == 0.25


def test_env_keys_are_case_insensitive() -> None:
    assert load(env={"tidings_Bus__Mode": "async"}).bus.mode == "async"


def test_env_string_fields_keep_text_that_looks_like_a_number() -> None:
    assert load(env={"TIDINGS_INSTANCE_ID": "123"}).instance_id == "123"


def test_env_values_in_raw_sections_are_yaml_scalars(tmp_path: Path) -> None:
    path = write(tmp_path, "event_broker:\n  provider: redis\n  redis: {host: localhost}\n")
    broker = load(path, env={"TIDINGS_EVENT_BROKER__REDIS__PORT": "6380"}).event_broker
    assert broker is not None
    assert broker.redis == RedisBrokerSettings(host="localhost", port=6380)


def test_tidings_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bus: {workers: 3}\n")
    assert load(env={"TIDINGS_CONFIG": str(path)}).bus.workers == 3


def test_bad_env_value_names_the_variable() -> None:
    message = error(None, {"TIDINGS_BUS__WORKERS": "many"})
    assert message == (
        "environment variable TIDINGS_BUS__WORKERS: bus.workers: "
        "expected an integer >= 1, got 'many'"
    )


def test_unknown_env_key_is_rejected() -> None:
    message = error(None, {"TIDINGS_BUS__WROKERS": "3"})
    assert message.startswith("environment variable TIDINGS_BUS__WROKERS: bus.wrokers: ")
    assert "unknown key (did you mean 'workers'?)" in message


def test_env_cannot_nest_under_a_scalar(tmp_path: Path) -> None:
    path = write(tmp_path, "source: x\n")
    message = error(path, {"TIDINGS_SOURCE__DEEP": "1"})
    assert message.startswith("environment variable TIDINGS_SOURCE__DEEP: source.deep: ")
    assert "not a mapping" in message


def test_env_empty_segment_is_rejected() -> None:
    assert "double underscore" in error(None, {"TIDINGS_BUS____MODE": "async"})
    assert "double underscore" in error(None, {"TIDINGS_BUS__": "async"})


# --- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0.0),
        (5, 5.0),
        (1.5, 1.5),
        ("30", 30.0),
        ("0.25", 0.25),
        ("500ms", 0.5),
        ("1s", 1.0),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("2h45m", 9900.0),
        (" 10 s ", 10.0),
        ("100us", 0.0001),
        ("1d", 86400.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "soon", "5 minutes", "s", "10x", "-1s", "-3", "inf", "nan"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [True, None, [1], -0.5])
def test_parse_duration_rejects_other_types(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)  # type: ignore[arg-type]


def test_duration_fields_are_floats(tmp_path: Path) -> None:
    settings = load(write(tmp_path, "bus: {close_timeout: 90s}\n"), env={})
    assert isinstance(settings.bus.close_timeout, Duration)
    assert settings.bus.close_timeout == 90.0


# --- seed 002 ---------------------------------------------------------------------------

# Verbatim blocks from seed 002's README.
SEED_002_QUICK_START = """\
event_broker:
  enabled: true
  provider: memory  # memory, redis, nats, database
  mode: async       # sync, async
  worker_count: 10
  buffer_size: 1000
  instance_id: "${HOSTNAME}"
"""
SEED_002_BLOCKS = [
    "event_broker:\n  provider: memory\n",
    """\
event_broker:
  provider: redis
  redis:
    stream_name: "resolvespec:events"
    consumer_group: "resolvespec-workers"
    host: "localhost"
    port: 6379
""",
    """\
event_broker:
  provider: nats
  nats:
    url: "nats://localhost:4222"
    stream_name: "RESOLVESPEC_EVENTS"
""",
    """\
event_broker:
  provider: database
  database:
    table_name: "events"
    channel: "resolvespec_events"
""",
    """\
event_broker:
  mode: async
  worker_count: 10
  buffer_size: 1000
""",
    "event_broker:\n  mode: sync\n",
    """\
event_broker:
  retry_policy:
    max_retries: 3
    initial_delay: 1s
    max_delay: 30s
    backoff_factor: 2.0  # Exponential backoff
""",
]


def test_seed_002_quick_start_loads_as_is(tmp_path: Path) -> None:
    settings = load(write(tmp_path, SEED_002_QUICK_START), env={"HOSTNAME": "api-3"})
    assert settings.bus.mode == "async"
    assert settings.bus.workers == 10
    assert settings.bus.buffer_size == 1000
    assert settings.instance_id == "api-3"
    assert settings.event_broker is not None
    assert settings.event_broker.enabled is True
    assert settings.event_broker.provider == "memory"
    assert settings.event_broker.worker_count == 10


@pytest.mark.parametrize("block", SEED_002_BLOCKS)
def test_every_seed_002_block_loads(tmp_path: Path, block: str) -> None:
    settings = load(write(tmp_path, block), env={})
    assert settings.event_broker is not None
    kwargs = settings.bus_kwargs()
    kwargs["mode"] = "inline"
    tidings.Bus(**kwargs).close()


def test_seed_002_combined_maps_onto_settings(tmp_path: Path) -> None:
    text = (
        SEED_002_QUICK_START
        + "  retry_policy:\n    max_retries: 3\n    initial_delay: 1s\n    max_delay: 30s\n"
        + "    backoff_factor: 2.0\n"
        + '  redis:\n    stream_name: "resolvespec:events"\n    port: 6379\n'
    )
    settings = load(write(tmp_path, text), env={"HOSTNAME": "h"})
    assert settings.bus_kwargs()["retry"] == RetryPolicy(
        max_retries=3, initial_delay=1.0, max_delay=30.0, backoff_factor=2.0
    )
    assert settings.event_broker is not None
    assert settings.event_broker.redis == RedisBrokerSettings(
        stream_name="resolvespec:events", port=6379
    )
    assert settings.event_broker.nats is None


def test_seed_002_sync_mode_is_the_inline_bus(tmp_path: Path) -> None:
    settings = load(write(tmp_path, "event_broker:\n  mode: sync\n"), env={})
    bus = tidings.Bus(**settings.bus_kwargs())
    assert bus.mode == "inline"
    bus.close()


def test_seed_002_conflict_with_bus_section(tmp_path: Path) -> None:
    path = write(tmp_path, "bus: {workers: 2}\nevent_broker: {worker_count: 3}\n")
    assert error(path) == (
        f"{path}: event_broker.worker_count: sets the same thing as bus.workers; "
        "keep only bus.workers"
    )


def test_env_override_beats_seed_002_value(tmp_path: Path) -> None:
    path = write(tmp_path, SEED_002_QUICK_START)
    settings = load(path, env={"TIDINGS_BUS__WORKERS": "2", "HOSTNAME": "h"})
    assert settings.bus.workers == 2
    settings = load(path, env={"TIDINGS_EVENT_BROKER__WORKER_COUNT": "5", "HOSTNAME": "h"})
    assert settings.bus.workers == 5


def test_seed_002_errors_name_the_seed_002_key(tmp_path: Path) -> None:
    path = write(tmp_path, "event_broker:\n  worker_count: 0\n")
    assert error(path) == f"{path}: event_broker.worker_count: expected an integer >= 1, got 0"
    path = write(tmp_path, "event_broker:\n  retry_policy: {initial_delay: 5s, max_delay: 1s}\n")
    assert error(path).startswith(f"{path}: event_broker.retry_policy.max_delay: ")
    path = write(tmp_path, "event_broker:\n  provider: kafka\n")
    assert error(path) == (
        f"{path}: event_broker.provider: expected one of 'database', 'memory', 'nats', "
        "'redis', got 'kafka'"
    )


# --- error messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bus:\n  workers: many\n", "bus.workers: expected an integer >= 1, got 'many'"),
        ("bus:\n  workers: 0\n", "bus.workers: expected an integer >= 1, got 0"),
        ("bus:\n  buffer_size: -5\n", "bus.buffer_size: expected an integer >= 1, got -5"),
        ("bus:\n  dead_letter_size: -1\n", "bus.dead_letter_size: expected an integer >= 0"),
        ("bus:\n  mode: fast\n", "bus.mode: expected one of 'async', 'inline', 'sync'"),
        ("bus:\n  when_full: wait\n", "bus.when_full: expected one of 'block', 'drop', 'raise'"),
        ("bus:\n  track_deliveries: maybe\n", "bus.track_deliveries: expected true or false"),
        ("bus:\n  close_timeout: soon\n", "bus.close_timeout: expected a duration"),
        ("bus:\n  close_timeout: -1\n", "bus.close_timeout: expected a duration"),
        ("bus:\n  retry:\n    max_delay: 5 min\n", "bus.retry.max_delay: expected a duration"),
        (
            "bus:\n  retry:\n    max_retries: -1\n",
            "bus.retry.max_retries: expected an integer >= 0",
        ),
        ("bus:\n  retry:\n    jitter: 2\n", "bus.retry.jitter: expected a number from 0 to 1"),
        (
            "bus:\n  retry:\n    backoff_factor: 0.5\n",
            "bus.retry.backoff_factor: expected a number >= 1",
        ),
        (
            "bus:\n  retry:\n    max_delay: 0.5s\n",
            "bus.retry.max_delay: expected a duration >= initial_delay (1s), got '0.5s'",
        ),
        ("bus: [1, 2]\n", "bus: expected a mapping, got a list"),
        ("bus:\n  retry: 3\n", "bus.retry: expected a mapping, got 3"),
        ("instance_id: [a]\n", "instance_id: expected a string, got a list"),
        ("bus:\n  1: 2\n", "bus: keys must be strings"),
    ],
)
def test_errors_name_file_key_path_and_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    message = error(path)
    assert message.startswith(f"{path}: {expected}"), message
    assert "Traceback" not in message and "$." not in message


def test_max_delay_below_initial_delay(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  retry:\n    initial_delay: 5s\n    max_delay: 2s\n")
    assert error(path) == (
        f"{path}: bus.retry.max_delay: expected a duration >= initial_delay (5s), got '2s'"
    )


def test_example_message_from_the_brief(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  workers: many\n", name="config.yaml")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    exc = info.value
    assert str(exc) == f"{path}: bus.workers: expected an integer >= 1, got 'many'"
    assert (exc.source, exc.key) == (str(path), "bus.workers")
    assert isinstance(exc, ValueError)


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("bus:\n  wrokers: 3\n", "bus.wrokers", "did you mean 'workers'?"),
        ("buss:\n  workers: 3\n", "buss", "did you mean 'bus'?"),
        ("bus:\n  retry:\n    retries: 3\n", "bus.retry.retries", "did you mean 'max_retries'?"),
        ("event_broker:\n  workers: 3\n", "event_broker.workers", "did you mean 'worker_count'?"),
        ("bus:\n  zzz: 3\n", "bus.zzz", "expected one of: mode, workers, buffer_size"),
    ],
)
def test_unknown_key_is_rejected(tmp_path: Path, text: str, key: str, hint: str) -> None:
    path = write(tmp_path, text)
    message = error(path)
    assert message.startswith(f"{path}: {key}: unknown key"), message
    assert hint in message


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  workers: 3\n    mode: async\n")
    message = error(path)
    assert message.startswith(f"{path}:3:")
    assert "invalid YAML" in message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  workers: 3\n  workers: 4\n")
    message = error(path)
    assert message.startswith(f"{path}:3:")
    assert "duplicate key 'workers' (first given on line 2)" in message


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        bus:
          retry:
            <<: {max_retries: 2, initial_delay: 1s}
            max_retries: 4
        """,
    )
    assert load(path, env={}).bus.retry == RetrySettings(max_retries=4, initial_delay=Duration(1))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert error(path) == f"{path}: expected a mapping of settings at the top, got a list"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert error(path) == f"{path}: config file not found"


def test_directory_and_binary_files(tmp_path: Path) -> None:
    assert "is a directory" in error(tmp_path)
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00bus")
    assert error(path).startswith(f"{path}: not UTF-8 text")


# --- seed 000: the events section -------------------------------------------------------

# Verbatim blocks from seed 000's README ("Basic", "Advanced", "Audit Logging").
SEED_000_BASIC = """\
events:
  enabled: true
  max_retries: 3
  retry_delay: 5  # seconds
  queue_size: 1000
  endpoints:
    component_registered:
      - "http://localhost:3000/webhooks/component-registered"
    energy_transfer:
      - "http://sql-audit-service:8080/events"
"""
SEED_000_ADVANCED = """\
events:
  enabled: true
  max_retries: 5
  retry_delay: 2
  queue_size: 5000
  endpoints:
    component_registered:
      - "http://audit-service:8080/events"
      - "http://monitoring-service:8080/webhooks"
      - "http://sql-database:8080/api/events"
    component_verified:
      - "http://audit-service:8080/events"
    pairing_initiated:
      - "http://audit-service:8080/events"
      - "http://real-time-dashboard:8080/events"
    pairing_completed:
      - "http://audit-service:8080/events"
      - "http://analytics-service:8080/events"
    lct_created:
      - "http://audit-service:8080/events"
    trust_tensor_created:
      - "http://audit-service:8080/events"
    energy_transfer:
      - "http://audit-service:8080/events"
      - "http://energy-monitoring:8080/events"
      - "http://billing-service:8080/events"
"""
SEED_000_AUDIT = """\
# config.yaml
events:
  enabled: true
  max_retries: 3
  retry_delay: 5
  queue_size: 1000
  endpoints:
    component_registered:
      - "http://audit-service:8080/events"
    component_verified:
      - "http://audit-service:8080/events"
    pairing_initiated:
      - "http://audit-service:8080/events"
    pairing_completed:
      - "http://audit-service:8080/events"
    lct_created:
      - "http://audit-service:8080/events"
    trust_tensor_created:
      - "http://audit-service:8080/events"
    energy_transfer:
      - "http://audit-service:8080/events"
"""
SEED_000_TYPES = (
    "component_registered",
    "component_verified",
    "pairing_initiated",
    "pairing_completed",
    "lct_created",
    "trust_tensor_created",
    "energy_transfer",
)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_dGhlIG9sZCBzZWNyZXQgc3RpbGwgdmVyaWZpZXM="


def seed_endpoint(url: str, events: tuple[str, ...], retries: int, delay: float) -> Endpoint:
    return Endpoint(
        id=endpoint_id_for_url(url),
        url=url,
        events=events,
        max_retries=retries,
        retry_delay=delay,
        source="config",
    )


def test_events_section_defaults_send_nothing() -> None:
    settings = load(env={})
    events = settings.events
    assert events == WebhookSettings()
    assert events.enabled is False
    assert (events.max_retries, events.retry_delay, events.queue_size) == (3, 5.0, 1000)
    assert (events.max_delay, events.jitter, events.timeout) == (3600.0, 0.2, 10.0)
    assert (events.failure_window, events.format) == (86400.0, "seed")
    assert events.guard_config_endpoints is False
    assert events.allow_networks == []
    assert from_settings(events) == []


def test_store_and_server_defaults() -> None:
    settings = load(env={})
    assert settings.store == StoreSettings(url="sqlite:///tidings.db")
    assert settings.server == ServerSettings()
    server = settings.server
    assert (server.host, server.port, server.api_key) == ("127.0.0.1", 8000, None)
    assert (server.max_body_bytes, server.max_batch, server.workers) == (1024 * 1024, 1000, 50)
    assert server.lease == 60.0
    assert isinstance(server.lease, Duration)


def test_seed_000_basic_loads_as_written(tmp_path: Path) -> None:
    events = load(write(tmp_path, SEED_000_BASIC), env={}).events
    assert events.enabled is True
    assert (events.max_retries, events.retry_delay, events.queue_size) == (3, 5.0, 1000)
    assert from_settings(events) == [
        seed_endpoint(
            "http://localhost:3000/webhooks/component-registered",
            ("component_registered",),
            3,
            5.0,
        ),
        seed_endpoint("http://sql-audit-service:8080/events", ("energy_transfer",), 3, 5.0),
    ]


def test_seed_000_advanced_gives_one_endpoint_per_url(tmp_path: Path) -> None:
    events = load(write(tmp_path, SEED_000_ADVANCED), env={}).events
    assert (events.max_retries, events.retry_delay, events.queue_size) == (5, 2.0, 5000)

    def ep(url: str, *types: str) -> Endpoint:
        return seed_endpoint(url, types, 5, 2.0)

    assert from_settings(events) == [
        ep("http://audit-service:8080/events", *SEED_000_TYPES),
        ep("http://monitoring-service:8080/webhooks", "component_registered"),
        ep("http://sql-database:8080/api/events", "component_registered"),
        ep("http://real-time-dashboard:8080/events", "pairing_initiated"),
        ep("http://analytics-service:8080/events", "pairing_completed"),
        ep("http://energy-monitoring:8080/events", "energy_transfer"),
        ep("http://billing-service:8080/events", "energy_transfer"),
    ]
    audit = from_settings(events)[0]
    assert audit.matches("lct_created") and not audit.matches("lct_revoked")
    assert audit.retry_policy().schedule()[:3] == [2.0, 4.0, 8.0]


def test_seed_000_audit_logging_block(tmp_path: Path) -> None:
    (audit,) = from_settings(load(write(tmp_path, SEED_000_AUDIT), env={}).events)
    assert audit == seed_endpoint("http://audit-service:8080/events", SEED_000_TYPES, 3, 5.0)


def test_endpoint_ids_are_stable_across_loads(tmp_path: Path) -> None:
    first = from_settings(load(write(tmp_path, SEED_000_ADVANCED), env={}).events)
    again = from_settings(load(write(tmp_path, SEED_000_ADVANCED), env={}).events)
    assert [e.id for e in first] == [e.id for e in again]
    assert len({e.id for e in first}) == 7


def test_extended_endpoint_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        events:
          enabled: true
          format: cloudevents
          timeout: 5s
          max_delay: 10m
          jitter: 0.1
          failure_window: 12h
          endpoints:
            order.*:
              - url: https://billing.example.com/hooks
                secret: [{SECRET}, {OLD_SECRET}]
                events: [refund.created]
                headers: {{X-Team: billing}}
                auth: {{bearer: tok-123}}
                timeout: 2500ms
                rate_limit: 20
                burst: 40
                max_in_flight: 4
                format: cloudevents-binary
                max_retries: 8
                retry_delay: 1s
                max_delay: 1m
            order.paid:
              - https://billing.example.com/hooks
              - http://plain:9000/in
          webhooks:
            audit:
              url: http://audit:8080/events
              events: ["**"]
              secret: {SECRET}
              auth: {{username: svc, password: pw}}
              enabled: false
            keyed:
              url: https://keyed.example.com/
              auth: {{header: X-Api-Key, value: k-1}}
        """,
    )
    billing, plain, audit, keyed = from_settings(load(path, env={}).events)
    assert billing == Endpoint(
        id=endpoint_id_for_url("https://billing.example.com/hooks"),
        url="https://billing.example.com/hooks",
        events=("order.*", "refund.created", "order.paid"),
        secrets=(SECRET, OLD_SECRET),
        headers={"X-Team": "billing"},
        auth=Auth(bearer="tok-123"),
        timeout=2.5,
        rate_limit=20.0,
        burst=40,
        max_in_flight=4,
        format="cloudevents-binary",
        max_retries=8,
        retry_delay=1.0,
        max_delay=60.0,
        jitter=0.1,
        failure_window=43200.0,
        source="config",
    )
    # A bare URL takes the section's defaults.
    assert plain == Endpoint(
        id=endpoint_id_for_url("http://plain:9000/in"),
        url="http://plain:9000/in",
        events=("order.paid",),
        timeout=5.0,
        format="cloudevents",
        max_delay=600.0,
        jitter=0.1,
        failure_window=43200.0,
        source="config",
    )
    assert (audit.id, audit.events, audit.secrets, audit.enabled) == (
        "audit",
        ("**",),
        (SECRET,),
        False,
    )
    assert audit.auth is not None
    assert audit.auth.headers() == {"Authorization": "Basic c3ZjOnB3"}
    assert (keyed.id, keyed.events, keyed.secrets) == ("keyed", ("**",), ())
    assert keyed.auth == Auth(header="X-Api-Key", value="k-1")
    assert (keyed.format, keyed.timeout, keyed.max_retries) == ("cloudevents", 5.0, 3)


def test_same_url_with_the_same_settings_is_one_endpoint(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        events:
          endpoints:
            a: [{{url: "http://x/", secret: {SECRET}}}]
            b: [{{url: "http://x/", secret: {SECRET}}}]
            c: ["http://x/"]
        """,
    )
    (endpoint,) = from_settings(load(path, env={}).events)
    assert endpoint.events == ("a", "b", "c")
    assert endpoint.secrets == (SECRET,)


def test_interpolated_secret(tmp_path: Path) -> None:
    path = write(tmp_path, "events:\n  webhooks:\n    w: {url: 'http://x', secret: '${HOOK}'}\n")
    (endpoint,) = from_settings(load(path, env={"HOOK": SECRET}).events)
    assert endpoint.secrets == (SECRET,)


def test_payload_format_matches_the_endpoint_type() -> None:
    assert typing.get_args(PayloadFormat) == typing.get_args(EndpointPayloadFormat)


# --- env overrides for events and server ------------------------------------------------


def test_env_enables_events_and_sets_the_api_key(tmp_path: Path) -> None:
    path = write(tmp_path, SEED_000_BASIC.replace("enabled: true", "enabled: false"))
    settings = load(
        path,
        env={
            "TIDINGS_EVENTS__ENABLED": "true",
            "TIDINGS_EVENTS__RETRY_DELAY": "1m",
            "TIDINGS_SERVER__HOST": "0.0.0.0",
            "TIDINGS_SERVER__API_KEY": "123456",
            "TIDINGS_SERVER__PORT": "9000",
            "TIDINGS_STORE__URL": "postgresql://u@db:5432/events",
        },
    )
    assert settings.events.enabled is True
    assert settings.events.retry_delay == 60.0
    assert settings.server.api_key == "123456"  # text stays text
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9000)
    assert settings.store.url == "postgresql://u@db:5432/events"
    assert {e.retry_delay for e in from_settings(settings.events)} == {60.0}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_hosts_need_no_api_key(tmp_path: Path, host: str) -> None:
    path = write(tmp_path, f"server:\n  host: '{host}'\n")
    assert load(path, env={}).server.api_key is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com", ""])
def test_api_key_required_off_loopback(tmp_path: Path, host: str) -> None:
    path = write(tmp_path, f"server:\n  host: '{host}'\n")
    message = error(path)
    assert message.startswith(f"{path}: server.api_key: required because server.host {host!r}")
    assert "TIDINGS_SERVER__API_KEY" in message
    assert load(path, env={"TIDINGS_SERVER__API_KEY": "k"}).server.api_key == "k"


# --- redaction --------------------------------------------------------------------------


def test_secrets_are_masked_when_printed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        store: {{url: "postgresql://app:db-pass@db/events"}}
        server: {{host: 0.0.0.0, api_key: the-api-key}}
        events:
          endpoints:
            a:
              - "http://u:url-pass@x/"
              - {{url: "http://y/", secret: {SECRET}, headers: {{X-Token: hdr-value}}}}
          webhooks:
            w:
              url: http://z/
              secret: [{SECRET}, {OLD_SECRET}]
              auth: {{username: svc, password: basic-pass}}
        """,
    )
    settings = load(path, env={})
    data = settings.to_builtins()
    text = json.dumps(data) + repr(settings.redacted())
    for secret in (SECRET, OLD_SECRET, "the-api-key", "db-pass", "url-pass", "hdr-value"):
        assert secret not in text
    assert "basic-pass" not in text
    assert data["server"]["api_key"] == "***"
    assert data["store"]["url"] == "postgresql://app:***@db/events"
    assert data["events"]["endpoints"]["a"][0] == "http://u:***@x/"
    assert data["events"]["endpoints"]["a"][1]["secret"] == "***"
    assert data["events"]["endpoints"]["a"][1]["headers"] == {"X-Token": "***"}
    webhook = data["events"]["webhooks"]["w"]
    assert webhook["secret"] == ["***", "***"]
    assert webhook["auth"]["username"] == "svc"
    assert webhook["auth"]["password"] == "***"
    # The settings themselves keep the real values.
    assert settings.server.api_key == "the-api-key"
    assert from_settings(settings.events)[1].secrets == (SECRET,)


def test_no_secrets_means_nothing_masked() -> None:
    data = load(env={}).to_builtins()
    assert data["server"]["api_key"] is None
    assert data["store"]["url"] == "sqlite:///tidings.db"


# --- events, store and server errors ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "events:\n  endpoints:\n    order.created: ['ftp://x/in']\n",
            "events.endpoints['order.created'][0]: expected an http:// or https:// URL with a "
            "host, got 'ftp://x/in'",
        ),
        (
            "events:\n  endpoints:\n    a: ['http://u:pw@:80']\n",
            "events.endpoints.a[0]: expected an http:// or https:// URL with a host, "
            "got 'http://u:***@:80'",
        ),
        (
            "events:\n  endpoints:\n    a: ['http://x:port/']\n",
            "events.endpoints.a[0]: expected an http:// or https:// URL",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'localhost:3000/hooks'}\n",
            "events.webhooks.w.url: expected an http:// or https:// URL",
        ),
        (
            "events:\n  endpoints:\n    'order..paid': ['http://x']\n",
            "events.endpoints['order..paid']: pattern 'order..paid' has an empty segment",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', events: [ok, 'a.b*']}\n",
            "events.webhooks.w.events[1]: pattern 'a.b*': segment 'b*' mixes '*' with text",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', events: []}\n",
            "events.webhooks.w.events: expected at least one pattern",
        ),
        (
            "events:\n  endpoints:\n    a: [{url: 'http://x', secrte: s}]\n",
            "events.endpoints.a[0].secrte: unknown key (did you mean 'secret'?); expected one "
            "of: url, secret, events,",
        ),
        (
            "events:\n  endpionts: {}\n",
            "events.endpionts: unknown key (did you mean 'endpoints'?)",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', auth: {token: t}}\n",
            "events.webhooks.w.auth.token: unknown key",
        ),
        (
            "events:\n  endpoints:\n    a: [{secret: s}]\n",
            "events.endpoints.a[0].url: required but missing: expected a string",
        ),
        ("events:\n  endpoints:\n    a: 'http://x'\n", "events.endpoints.a: expected a list"),
        (
            "events:\n  endpoints:\n    a: [5]\n",
            "events.endpoints.a[0]: expected a string or a mapping, got 5",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', rate_limit: 0}\n",
            "events.webhooks.w.rate_limit: expected a number > 0, got 0",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', rate_limit: .inf}\n",
            "events.webhooks.w.rate_limit: expected a finite number",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', max_in_flight: 0}\n",
            "events.webhooks.w.max_in_flight: expected an integer >= 1, got 0",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', format: xml}\n",
            "events.webhooks.w.format: expected one of 'cloudevents', 'cloudevents-binary', "
            "'seed', got 'xml'",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', timeout: 0}\n",
            "events.webhooks.w.timeout: expected a duration > 0, got 0s",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', max_delay: 1s}\n",
            "events.webhooks.w.max_delay: expected max_delay (1s) >= retry_delay (5s)",
        ),
        (
            "events:\n  retry_delay: 10s\n  max_delay: 2s\n",
            "events.max_delay: expected a duration >= retry_delay (10s), got '2s'",
        ),
        ("events:\n  timeout: 0\n", "events.timeout: expected a duration > 0, got 0"),
        ("events:\n  jitter: 2\n", "events.jitter: expected a number from 0 to 1, got 2"),
        ("events:\n  queue_size: 0\n", "events.queue_size: expected an integer >= 1, got 0"),
        ("events:\n  retry_delay: soon\n", "events.retry_delay: expected a duration"),
        (
            "events:\n  allow_networks: [10.0.0.0/8, intranet]\n",
            "events.allow_networks[1]: expected a network in CIDR notation",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', auth: {bearer: t, username: u}}\n",
            "events.webhooks.w.auth: expected exactly one of {bearer}, {username, password} or "
            "{header, value}, got bearer, username",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', auth: {header: X-Key}}\n",
            "events.webhooks.w.auth: expected exactly one of",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', auth: {}}\n",
            "events.webhooks.w.auth: expected exactly one of {bearer}, {username, password} or "
            "{header, value}, got no keys",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', headers: {'Bad Name': v}}\n",
            "events.webhooks.w.headers['Bad Name']: expected an HTTP header name",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', headers: {X-A: \"a\\r\\nB: c\"}}\n",
            "events.webhooks.w.headers.X-A: a header value cannot hold line breaks",
        ),
        (
            "events:\n  webhooks:\n    'bad name': {url: 'http://x'}\n",
            "events.webhooks['bad name']: expected a name of letters, digits",
        ),
        ("server:\n  port: 70000\n", "server.port: expected an integer from 0 to 65535"),
        ("server:\n  workers: 0\n", "server.workers: expected an integer >= 1, got 0"),
        ("server:\n  max_batch: 0\n", "server.max_batch: expected an integer >= 1, got 0"),
        ("server:\n  max_body_bytes: 0\n", "server.max_body_bytes: expected an integer >= 1"),
        ("server:\n  lease: 0\n", "server.lease: expected a duration > 0, got 0"),
        ("server:\n  api_key: ''\n", "server.api_key: expected a non-empty string"),
        ("server:\n  hots: 0.0.0.0\n", "server.hots: unknown key (did you mean 'host'?)"),
        ("store:\n  url: tidings.db\n", "store.url: expected a store URL such as"),
        ("store:\n  uri: x\n", "store.uri: unknown key (did you mean 'url'?)"),
    ],
)
def test_events_store_server_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    message = error(path)
    assert message.startswith(f"{path}: {expected}"), message


@pytest.mark.parametrize(
    "secret",
    [
        "not-prefixed-c2VjcmV0",
        "whsec_not base64!",
        "whsec_",
        "whsec_c2VjcmV",  # 7 base64 characters: truncated
    ],
)
def test_bad_secret_is_named_but_never_shown(tmp_path: Path, secret: str) -> None:
    path = write(
        tmp_path, f"events:\n  endpoints:\n    a: [{{url: 'http://x', secret: '{secret}'}}]\n"
    )
    message = error(path)
    assert message.startswith(
        f"{path}: events.endpoints.a[0].secret: expected a signing secret 'whsec_' followed by "
        "base64 (the value is not shown)"
    )
    shown = message.replace("'whsec_'", "")
    assert secret not in shown
    assert not secret.removeprefix("whsec_") or secret.removeprefix("whsec_") not in shown
    assert "os.urandom" in message


def test_bad_secret_in_a_rotation_list_names_its_index(tmp_path: Path) -> None:
    path = write(
        tmp_path, f"events:\n  webhooks:\n    w: {{url: 'http://x', secret: [{SECRET}, oops]}}\n"
    )
    message = error(path)
    assert message.startswith(f"{path}: events.webhooks.w.secret[1]: expected a signing secret")
    assert "oops" not in message
    path = write(tmp_path, "events:\n  webhooks:\n    w: {url: 'http://x', secret: []}\n")
    assert "events.webhooks.w.secret: expected at least one secret" in error(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("events:\n  webhooks:\n    w: {url: 'http://x', secret: 8675309}\n", "secret"),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', auth: {bearer: 8675309}}\n",
            "auth.bearer",
        ),
        (
            "events:\n  webhooks:\n    w: {url: 'http://x', headers: {X-Key: 8675309}}\n",
            "headers.X-Key",
        ),
    ],
)
def test_type_errors_under_secret_keys_hide_the_value(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    message = error(path)
    assert message.startswith(f"{path}: events.webhooks.w.{key}: expected ")
    assert message.endswith("got a number (value not shown)")
    assert "8675309" not in message


@pytest.mark.parametrize(
    ("spec", "key", "expected"),
    [
        ("headers: {Host: evil.example}", "headers.Host", "'Host' is set by the HTTP client"),
        ("headers: {content-length: '0'}", "headers.content-length", "'content-length' is set"),
        (
            "headers: {Transfer-Encoding: chunked}",
            "headers.Transfer-Encoding",
            "'Transfer-Encoding' is set",
        ),
        ("headers: {Connection: close}", "headers.Connection", "'Connection' is set by the"),
        (
            "headers: {Content-Type: text/plain}",
            "headers.Content-Type",
            "'Content-Type' follows from",
        ),
        (
            "headers: {Webhook-Signature: 'v1,x'}",
            "headers.Webhook-Signature",
            "'Webhook-Signature' is one of the Standard Webhooks signature headers",
        ),
        ("headers: {webhook-id: m}", "headers.webhook-id", "'webhook-id' is one of the"),
        ("headers: {WEBHOOK-TIMESTAMP: '1'}", "headers.WEBHOOK-TIMESTAMP", "'WEBHOOK-TIMESTAMP'"),
        ("headers: {tidings-attempt: '1'}", "headers.tidings-attempt", "'tidings-attempt' is set"),
        ("headers: {ce-id: x}", "headers.ce-id", "'ce-id': ce-* headers carry"),
        (
            'headers: {X-A: "bell\\a"}',
            "headers.X-A",
            "a header value cannot hold line breaks, NUL or other control characters (tabs are "
            "fine); found control character U+0007 at position 4 (the value is not shown)",
        ),
        ('headers: {X-A: "a\\0"}', "headers.X-A", "a header value cannot hold line breaks"),
        ('auth: {bearer: "t\\r\\nX: 1"}', "auth.bearer", "a header value cannot hold"),
        ("auth: {username: 'a:b', password: p}", "auth.username", "expected a user name"),
        ("auth: {header: webhook-id, value: v}", "auth.header", "'webhook-id' is one of"),
        (
            "auth: {bearer: t}, headers: {authorization: x}",
            "headers.authorization",
            "'authorization' is also set by auth; give it in one place",
        ),
    ],
)
def test_endpoint_header_rules(tmp_path: Path, spec: str, key: str, expected: str) -> None:
    """The rules the HTTP API applies too (tidings.headers): a header that would split the
    request, or replace one that tidings or the HTTP client sets, is refused when loading."""
    path = write(tmp_path, f"events:\n  webhooks:\n    w: {{url: 'http://x', {spec}}}\n")
    message = error(path)
    assert message.startswith(f"{path}: events.webhooks.w.{key}: {expected}"), message
    for hidden in ("evil.example", "chunked", "text/plain", "bell", "v1,x"):
        assert hidden not in message.partition(": ")[2].partition(": ")[2], message


def test_header_values_may_hold_tabs_and_non_ascii(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "events:\n  webhooks:\n    w: {url: 'http://x', headers: {X-A: \"a\\tb caf\u00e9\"}}\n",
    )
    (ep,) = from_settings(load(path, env={}).events)
    assert ep.headers == {"X-A": "a\tb caf\u00e9"}


def test_same_url_with_different_settings_names_both_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        events:
          endpoints:
            order.created: [{{url: "http://x/", secret: {SECRET}, timeout: 2s}}]
            order.paid: ["http://y/", {{url: "http://x/", timeout: 3s}}]
        """,
    )
    message = error(path)
    assert message.startswith(
        f"{path}: events.endpoints['order.paid'][1]: same URL as "
        "events.endpoints['order.created'][0] with a different secret, timeout; "
    )
    assert SECRET not in message


def test_webhook_name_cannot_take_a_url_endpoint_id(tmp_path: Path) -> None:
    taken = endpoint_id_for_url("http://x/")
    path = write(
        tmp_path,
        f"events:\n  endpoints:\n    a: ['http://x/']\n  webhooks:\n    {taken}: {{url: 'http://y'}}\n",
    )
    assert error(path) == (
        f"{path}: events.webhooks.{taken}: this name is the id of the endpoint at "
        "events.endpoints.a[0]"
    )


def test_lease_must_outlast_every_timeout(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server: {lease: 30s}
        events:
          endpoints:
            a: ["http://fast/"]
            b: [{url: "http://slow/", timeout: 45s}]
        """,
    )
    message = error(path)
    assert message.startswith(
        f"{path}: server.lease: expected a duration longer than every webhook timeout, got "
        "'30s', not longer than the endpoint at events.endpoints.b[0] (timeout 45s)"
    )
    assert "raise server.lease or lower that timeout" in message
    path = write(tmp_path, "events: {timeout: 2m}\n")
    assert error(path).startswith(
        f"{path}: server.lease: expected a duration longer than every webhook timeout, got the "
        "default 60s, not longer than events.timeout (120s)"
    )
    path = write(tmp_path, "server: {lease: 10s}\nevents: {timeout: 10s}\n")
    assert "not longer than events.timeout (10s)" in error(path)
    assert load(write(tmp_path, "server: {lease: 11s}\nevents: {timeout: 10s}\n"), env={})


def test_a_short_lease_says_why_and_what_to_do(tmp_path: Path) -> None:
    """Endpoints registered through the API take events.timeout (10 s by default), so a lease of
    3 s wedges them too: refused naming both settings, the reason and the way out."""
    path = write(tmp_path, "server: {lease: 3s}\n")
    assert error(path) == (
        f"{path}: server.lease: expected a duration longer than every webhook timeout, got "
        "'3s', not longer than events.timeout (10s): a worker holds a claimed delivery for "
        "server.lease, which must outlast the request plus a margin to record its outcome, or "
        "the request is never started; raise server.lease or lower that timeout"
    )


def test_errors_from_the_environment_name_the_variable() -> None:
    message = error(None, {"TIDINGS_EVENTS__ENABLED": "perhaps"})
    assert message == (
        "environment variable TIDINGS_EVENTS__ENABLED: events.enabled: expected true or false, "
        "got 'perhaps'"
    )
    message = error(None, {"TIDINGS_SERVER__HOST": "0.0.0.0"})
    assert message.startswith("settings: server.api_key: required because")


def test_from_settings_on_unloaded_settings_raises_config_error() -> None:
    section = WebhookSettings(webhooks={"w": EndpointSettings(url="gopher://x")})
    with pytest.raises(ConfigError) as info:
        from_settings(section)
    assert str(info.value).startswith("settings: events.webhooks.w.url: expected an http://")


# --- events.source: where tidings serve takes its events ---------------------------------


def test_events_source_defaults_to_http_and_takes_store_or_a_transport_url(
    tmp_path: Path,
) -> None:
    assert load(env={}).events.source == "http"
    assert load(env={}).events.source_consumer == "tidings-webhooks"
    store = load(write(tmp_path, "events: {source: store, source_consumer: shop-1}"), env={})
    assert (store.events.source, store.events.source_consumer) == ("store", "shop-1")
    url = "redis://:hunter2@localhost:6379/0?prefix=shop"
    settings = load(env={"TIDINGS_EVENTS__SOURCE": url, "TIDINGS_EVENTS__SOURCE_ACK_WAIT": "5s"})
    assert settings.events.source == url
    assert settings.events.source_ack_wait == 5.0
    assert "hunter2" not in json.dumps(settings.to_builtins())
    assert settings.redacted().events.source == "redis://:***@localhost:6379/0?prefix=shop"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("kafka", "expected http (events come in through POST /events), store"),
        ("redis://", "or a transport URL such as redis://localhost:6379/0, got 'redis://'"),
        ("sqlite:///events.db", "write `source: store`"),
        ("redis://:hunter2@x:6379", None),  # accepted; the password is never echoed anyway
    ],
)
def test_a_bad_events_source_names_the_key_and_what_fits(
    tmp_path: Path, value: str, says: str | None
) -> None:
    path = write(tmp_path, f"events: {{source: '{value}'}}")
    if says is None:
        assert load(path, env={}).events.source == value
        return
    message = error(path)
    assert message.startswith(f"{path}: events.source: "), message
    assert says in message, message


def test_a_bad_source_consumer_or_ack_wait_is_refused(tmp_path: Path) -> None:
    assert "events.source_consumer: expected a name" in error(
        write(tmp_path, "events: {source_consumer: 'a b'}")
    )
    assert "events.source_ack_wait: expected a duration > 0" in error(
        write(tmp_path, "events: {source_ack_wait: 0}")
    )
