"""The CLI a person uses at a terminal, against a real ``tidings serve`` process: tail, publish,
endpoints, deliveries show, events show; their exit codes and their ``--json`` lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.server.conftest import free_port
from tidings.cli import app
from tidings.config import load
from tidings.store import open_store

ADMIN = "cli-admin-key-0123456789abcdef"
READER = "cli-reader-key-0123456789abcdef"
NS = "i13cli"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TIDINGS_")}
    return {**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra}


def start_server(tmp: Path, port: int, keys: bool = True) -> subprocess.Popen[bytes]:
    """`tidings serve` on ``port`` with its store in ``tmp`` (an admin and a read key unless
    told not to); returns once /health answers."""
    config = tmp / "tidings.yaml"
    server: dict[str, Any] = {"port": port}
    if keys:
        server["api_keys"] = [
            {"name": "ops", "key": ADMIN, "scopes": ["admin"]},
            {"name": "dash", "key": READER, "scopes": ["read"]},
        ]
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": f"sqlite:///{tmp / 'tidings.db'}"},
                "server": server,
                "events": {"allow_networks": ["127.0.0.0/8"]},
            }
        )
    )
    log = tmp / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "--config", str(config), "serve"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=tmp,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"serve did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A `tidings serve` process with an admin and a read key; yields the client env."""
    tmp = tmp_path_factory.mktemp("cli")
    port = free_port()
    proc = start_server(tmp, port)
    yield {"TIDINGS_URL": f"http://127.0.0.1:{port}", "TIDINGS_API_KEY": ADMIN, "TMP": str(tmp)}
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)


def run(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    client = {k: v for k, v in env.items() if k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(**client),
        timeout=timeout,
        check=False,
    )


def stream_clients(env: dict[str, str]) -> int:
    """The server's live stream clients (``tidings_stream_clients`` on /metrics)."""
    key = env.get("TIDINGS_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(env["TIDINGS_URL"] + "/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith("tidings_stream_clients "):
            return int(float(line.split()[1]))
    raise AssertionError("no tidings_stream_clients on /metrics")


def wait_for_clients(env: dict[str, str], count: int) -> None:
    """Until ``count`` more stream clients than before are live (a tail process connected)."""
    deadline = time.monotonic() + 60
    while (seen := stream_clients(env)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{seen} live stream clients after 60 s, wanted {count}")
        time.sleep(0.1)


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_publish_then_events_show_by_id_and_position(server: dict[str, str]) -> None:
    done = run(server, "publish", f"{NS}.order.created", "--data", '{"order": "o-1"}', "--json")
    assert done.returncode == 0, done.stderr
    event_id = json.loads(done.stdout)["ids"][0]
    shown = run(server, "events", "show", event_id, "--json")
    assert shown.returncode == 0, shown.stderr
    item = json.loads(shown.stdout)
    assert item["event"]["type"] == f"{NS}.order.created", item
    assert item["event"]["data"] == {"order": "o-1"} and item["deliveries"] == [], item
    by_position = run(server, "events", "show", str(item["position"]))
    assert by_position.returncode == 0 and event_id in by_position.stdout, by_position
    assert f"{NS}.order.created" in by_position.stdout


def test_publish_json_lines_then_tail_reads_them_back(server: dict[str, str]) -> None:
    lines = "\n".join(json.dumps({"n": i}) for i in range(1200))
    done = run(server, "publish", f"{NS}.bulk", "--data", "@-", stdin=lines)
    assert done.returncode == 0 and "published 1200" in done.stdout, (done.stdout, done.stderr)
    tailed = run(server, "tail", f"{NS}.bulk", "--after", "0", "--count", "1200", "--json")
    assert tailed.returncode == 0, tailed.stderr
    got = json_lines(tailed.stdout)
    assert [g["event"]["data"]["n"] for g in got] == list(range(1200)), len(got)
    positions = [g["position"] for g in got]
    assert positions == sorted(set(positions)), "positions repeat or go back"


def test_tail_follows_live_events_coloured_or_json(server: dict[str, str]) -> None:
    client = {k: v for k, v in server.items() if k.startswith("TIDINGS_")}
    cmd = [sys.executable, "-m", "tidings", "tail", f"{NS}.live.*", "--count", "3"]
    before = stream_clients(server)
    procs = [
        subprocess.Popen([*cmd, "--json"], stdout=subprocess.PIPE, text=True, env=_env(**client)),
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env(**client)),
    ]
    try:
        wait_for_clients(server, before + 2)  # both live (they start at the newest event)
        for kind in ("a", "skip", "b", "c"):
            t = f"{NS}.live.{kind}" if kind != "skip" else f"{NS}.other"
            assert run(server, "publish", t, "--data", '{"k": 1}').returncode == 0
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    types = [item["event"]["type"] for item in json_lines(outs[0])]
    assert types == [f"{NS}.live.a", f"{NS}.live.b", f"{NS}.live.c"], outs[0]
    plain = outs[1].splitlines()
    assert len(plain) == 3 and f"{NS}.live.b" in plain[1] and '{"k":1}' in plain[1], plain


def test_tail_and_publish_straight_against_a_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'direct.db'}"
    missing = run({}, "tail", "--store", url)
    assert missing.returncode == 2 and "direct.db" in missing.stderr, missing.stderr
    open_store(url).close()  # a store made on purpose (`tidings migrate URL` does the same)
    done = run({}, "publish", f"{NS}.direct", "--store", url, "--data", "[1, 2]")
    assert done.returncode == 0 and "at #1" in done.stdout, (done.stdout, done.stderr)
    run({}, "publish", f"{NS}.else", "--store", url)
    run({}, "publish", f"{NS}.direct", "--store", url, "--data", '"x"')
    tailed = run(
        {}, "tail", f"{NS}.direct", "--store", url, "--after", "0", "--count", "2", "--json"
    )
    assert tailed.returncode == 0, tailed.stderr
    assert [g["event"]["data"] for g in json_lines(tailed.stdout)] == [[1, 2], "x"]


def test_endpoints_and_deliveries(server: dict[str, str]) -> None:
    hook = "http://127.0.0.1:9/hook"  # nothing listens: the delivery stays pending/retrying
    added = run(server, "endpoints", "add", hook, "--event", f"{NS}.hooked", "--json")
    assert added.returncode == 0, added.stderr
    ep = json.loads(added.stdout)
    assert ep["secret"].startswith("whsec_") and ep["events"] == [f"{NS}.hooked"], ep
    listed = json.loads(run(server, "endpoints", "list", "--json").stdout)
    assert ep["id"] in [e["id"] for e in listed], listed
    table = run(server, "endpoints", "list")
    assert ep["id"] in table.stdout and "enabled" in table.stdout, table.stdout
    off = run(server, "endpoints", "disable", ep["id"], "--json")
    assert off.returncode == 0 and json.loads(off.stdout)["enabled"] is False, off
    on = run(server, "endpoints", "enable", ep["id"])
    assert on.returncode == 0 and f"enabled {ep['id']}" in on.stdout, on
    rotated = run(server, "endpoints", "rotate-secret", ep["id"], "--json")
    new = json.loads(rotated.stdout)["secret"]
    assert new.startswith("whsec_") and new != ep["secret"]
    published = run(server, "publish", f"{NS}.hooked", "--json")
    event_id = json.loads(published.stdout)["ids"][0]
    shown = json.loads(run(server, "events", "show", event_id, "--json").stdout)
    assert [d["endpoint_id"] for d in shown["deliveries"]] == [ep["id"]], shown
    delivery = shown["deliveries"][0]["id"]
    one = run(server, "deliveries", "show", delivery, "--json")
    assert one.returncode == 0 and json.loads(one.stdout)["event_id"] == event_id, one
    text = run(server, "deliveries", "show", delivery)
    assert delivery in text.stdout and ep["id"] in text.stdout, text.stdout


def test_exit_codes(server: dict[str, str], tmp_path: Path) -> None:
    bad_json = run(server, "publish", f"{NS}.x", "--data", "{nope")
    assert bad_json.returncode == 2 and "--data" in bad_json.stderr, bad_json.stderr
    missing = run(server, "publish", f"{NS}.x", "--data", "@no-such-file.json")
    assert missing.returncode == 2 and "no-such-file.json" in missing.stderr, missing.stderr
    unknown = run(server, "deliveries", "show", "dlv_nope")
    assert unknown.returncode == 2 and "404" in unknown.stderr, unknown.stderr
    no_event = run(server, "events", "show", "999999999")
    assert no_event.returncode == 2 and "no event" in no_event.stderr, no_event.stderr
    pattern = run(server, "tail", "a..b")
    assert pattern.returncode == 2, pattern.stderr
    reader = {**server, "TIDINGS_API_KEY": READER}
    forbidden = run(reader, "endpoints", "add", "http://127.0.0.1:9/x")
    assert forbidden.returncode == 2 and "403" in forbidden.stderr, forbidden.stderr
    keyless = {**server, "TIDINGS_API_KEY": ""}
    refused = run(keyless, "endpoints", "list")
    assert refused.returncode == 2 and "--api-key" in refused.stderr, refused.stderr
    away = run({"TIDINGS_URL": f"http://127.0.0.1:{free_port()}"}, "events", "show", "1")
    assert away.returncode == 1 and "cannot reach" in away.stderr, away.stderr
    bad_url = run({"TIDINGS_URL": "localhost:8000"}, "events", "show", "1")
    assert bad_url.returncode == 2 and "--url" in bad_url.stderr, bad_url.stderr
    client = {k: v for k, v in server.items() if k.startswith("TIDINGS_")}
    live = stream_clients(server)
    tail = subprocess.Popen(
        [sys.executable, "-m", "tidings", "tail"], stdout=subprocess.PIPE, env=_env(**client)
    )
    wait_for_clients(server, live + 1)
    tail.send_signal(signal.SIGINT)
    assert tail.wait(30) == 130


def test_client_variables_are_not_settings() -> None:
    settings = load(None, env={"TIDINGS_URL": "http://x:1", "TIDINGS_API_KEY": "k"})
    assert settings.server.api_key is None


@pytest.mark.parametrize(
    "command",
    [
        ["tail"],
        ["publish"],
        ["endpoints", "list"],
        ["endpoints", "add"],
        ["endpoints", "disable"],
        ["endpoints", "enable"],
        ["endpoints", "rotate-secret"],
        ["deliveries", "show"],
        ["events", "show"],
    ],
)
def test_every_new_command_has_help_with_examples(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and f"tidings {' '.join(command)}" in result.output


def test_tail_waits_for_a_restarted_server_and_resumes(tmp_path: Path) -> None:
    port = free_port()
    env = {"TIDINGS_URL": f"http://127.0.0.1:{port}"}
    first = start_server(tmp_path, port, keys=False)
    tail = subprocess.Popen(
        [sys.executable, "-m", "tidings", "tail", f"{NS}.restart", "--json", "--count", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env),
    )  # fmt: skip
    second = None
    try:
        wait_for_clients(env, 1)  # connected
        assert run(env, "publish", f"{NS}.restart", "--data", "1").returncode == 0
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
        store = f"sqlite:///{tmp_path / 'tidings.db'}"  # while the server is down
        assert run(env, "publish", f"{NS}.restart", "--store", store, "--data", "2").returncode == 0
        second = start_server(tmp_path, port, keys=False)
        assert run(env, "publish", f"{NS}.restart", "--data", "3").returncode == 0
        out, err = tail.communicate(timeout=60)
    finally:
        for p in (tail, first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert tail.returncode == 0, err
    assert [item["event"]["data"] for item in json_lines(out)] == [1, 2, 3], (out, err)
    assert "reconnecting" in err, err


def test_tail_resumes_from_its_first_connect_when_nothing_was_printed(tmp_path: Path) -> None:
    """No --after, no event printed before the server stops: the events stored while it was
    down (and after it came back) still reach tail, from the head at its first connect."""
    port = free_port()
    env = {"TIDINGS_URL": f"http://127.0.0.1:{port}"}
    first = start_server(tmp_path, port, keys=False)
    store = f"sqlite:///{tmp_path / 'tidings.db'}"
    assert run(env, "publish", f"{NS}.before", "--data", "0").returncode == 0  # not wanted
    tail = subprocess.Popen(
        [sys.executable, "-m", "tidings", "tail", f"{NS}.quiet", "--json", "--count", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env),
    )  # fmt: skip
    second = None
    try:
        wait_for_clients(env, 1)  # connected, nothing printed yet
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
        assert run(env, "publish", f"{NS}.quiet", "--store", store, "--data", "1").returncode == 0
        second = start_server(tmp_path, port, keys=False)
        assert run(env, "publish", f"{NS}.quiet", "--data", "2").returncode == 0
        try:
            out, err = tail.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            tail.kill()
            out, err = tail.communicate()
            raise AssertionError(f"tail did not print 2 events in 60 s: {out!r} {err!r}") from None
    finally:
        for p in (tail, first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert tail.returncode == 0, (out, err)
    assert [item["event"]["data"] for item in json_lines(out)] == [1, 2], (out, err)
    assert "reconnecting" in err, err
