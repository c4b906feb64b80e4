"""tidings.config: YAML + TIDINGS_* settings, interpolation, durations, seed-002 files, errors."""

from __future__ import annotations

import ast
import socket
import textwrap
from pathlib import Path

import pytest

import tidings
from tidings.config import (
    ConfigError,
    Duration,
    RetrySettings,
    Settings,
    load,
    parse_duration,
)
from tidings.retry import RetryPolicy


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
        assert len(bus._workers) == 2
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


def test_config_module_stays_on_the_ground_floor() -> None:
    source = Path(tidings.config.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert {m for m in imported if m.startswith("tidings")} == {"tidings.retry"}


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
    assert broker.redis == {"host": "localhost", "port": 6380}


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
    assert settings.event_broker.redis == {"stream_name": "resolvespec:events", "port": 6379}
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
