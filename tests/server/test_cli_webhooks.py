"""`tidings dlq list | retry`, `tidings replay` and the `serve` safety check, through the real CLI.

State is prepared with ``DeliveryQueue`` on the same SQLite file the config names, so each
command is checked against what it finds in (and leaves in) the real queue tables.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from typer.testing import CliRunner

from tidings.cli import app
from tidings.event import Event
from tidings.store import open_store
from tidings.webhooks.endpoint import Endpoint
from tidings.webhooks.queue import Attempt, Claimed, DeliveryQueue, Outcome


@dataclass
class Setup:
    config: Path
    store_url: str
    runner: CliRunner

    def invoke(self, *args: str) -> Any:
        return self.runner.invoke(app, ["--config", str(self.config), *args])

    def queue(self) -> DeliveryQueue:
        store = open_store(self.store_url)
        return DeliveryQueue(store)  # type: ignore[arg-type]


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    for name in list(os.environ):
        if name.upper().startswith("TIDINGS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: whole ids on one line
    url = f"sqlite:///{tmp_path / 'tidings.db'}"
    config = tmp_path / "tidings.yaml"
    config.write_text(yaml.safe_dump({"store": {"url": url}}))
    return Setup(config, url, CliRunner())


@pytest.fixture
def queue(setup: Setup) -> Iterator[DeliveryQueue]:
    q = setup.queue()
    q.save_endpoint(Endpoint(id="alpha", url="http://127.0.0.1:9/a", events=("shop.order.*",)))
    q.save_endpoint(Endpoint(id="beta", url="http://127.0.0.1:9/b", events=("**",)))
    try:
        yield q
    finally:
        q.close()
        q.store.close()


def kill(queue: DeliveryQueue, endpoint_id: str, n: int, error: str = "HTTP 500") -> list[str]:
    """``n`` dead deliveries to ``endpoint_id``: accepted, claimed, attempted, given up."""
    queue.accept(
        [Event(type="shop.order.placed", data={"n": i}) for i in range(n)], lambda e: [endpoint_id]
    )
    claimed: list[Claimed] = queue.claim(
        100, 30, skip_endpoints=[e.id for e in queue.endpoints() if e.id != endpoint_id]
    )
    assert len(claimed) == n
    queue.finish(
        [
            Outcome(
                c.delivery.id,
                c.lease_token,
                Attempt(c.delivery.id, 1, time.time(), 0.01, 500, "no", error),
                "dead",
            )
            for c in claimed
        ]
    )
    return [c.delivery.id for c in claimed]


# ---- dlq list ------------------------------------------------------------------------------


def test_dlq_list_when_empty(setup: Setup, queue: DeliveryQueue) -> None:
    result = setup.invoke("dlq", "list")
    assert result.exit_code == 0, result.output
    assert "no dead deliveries" in result.stdout


def test_dlq_list_table_shows_each_dead_delivery(setup: Setup, queue: DeliveryQueue) -> None:
    dead = kill(queue, "alpha", 2, error="HTTP 503 from the receiver")
    queue.accept([Event(type="x.y")], lambda e: ["beta"])  # pending: not listed
    result = setup.invoke("dlq", "list")
    assert result.exit_code == 0, result.output
    for did in dead:
        assert did in result.stdout
    assert "HTTP 503 from the receiver" in result.stdout
    assert result.stdout.count("alpha") == 2 and "beta" not in result.stdout


def test_dlq_list_prints_whole_ids_on_a_narrow_terminal(
    setup: Setup, queue: DeliveryQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids are what `dlq retry` takes: never cut, whatever the width (80 columns here)."""
    long_error = "HTTP 503: " + "the receiver said no " * 10
    dead = kill(queue, "alpha", 2, error=long_error)
    monkeypatch.setenv("COLUMNS", "80")
    result = setup.invoke("dlq", "list")
    assert result.exit_code == 0, result.output
    events = {d.event_id for d in queue.deliveries(state="dead")}
    for whole in (*dead, *events):
        assert whole in result.stdout, result.stdout
    assert "…" not in result.stdout and "HTTP 503: the receiver said no" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    retried = setup.invoke("dlq", "retry", _first_id(result.stdout, dead))
    assert retried.exit_code == 0 and "1 deliveries queued again" in retried.stdout


def _first_id(listing: str, ids: list[str]) -> str:
    """The first delivery id as it appears in the listing (what a user would copy)."""
    return min((listing.index(i), i) for i in ids)[1]


def test_dlq_list_json_one_object_per_line(setup: Setup, queue: DeliveryQueue) -> None:
    dead_a = kill(queue, "alpha", 2)
    dead_b = kill(queue, "beta", 1, error="cannot connect")
    result = setup.invoke("dlq", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert sorted(r["id"] for r in rows) == sorted(dead_a + dead_b)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True), "newest first"
    by_id = {r["id"]: r for r in rows}
    assert by_id[dead_b[0]] == {
        **by_id[dead_b[0]],
        "endpoint_id": "beta",
        "attempts": 1,
        "last_status": 500,
        "last_error": "cannot connect",
    }
    result = setup.invoke("dlq", "list", "--json", "--endpoint", "beta", "--limit", "5")
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == dead_b


# ---- dlq retry -----------------------------------------------------------------------------


def test_dlq_retry_one_id_makes_it_pending_with_a_fresh_budget(
    setup: Setup, queue: DeliveryQueue
) -> None:
    first, second = kill(queue, "alpha", 2)
    result = setup.invoke("dlq", "retry", first)
    assert result.exit_code == 0, result.output
    assert "1 deliveries queued again" in result.stdout
    again = queue.delivery(first)
    assert again is not None and (again.state, again.attempts) == ("pending", 0)
    assert queue.delivery(second).state == "dead"  # type: ignore[union-attr]


def test_dlq_retry_endpoint_only_touches_that_endpoint(setup: Setup, queue: DeliveryQueue) -> None:
    dead_a = kill(queue, "alpha", 2)
    dead_b = kill(queue, "beta", 1)
    result = setup.invoke("dlq", "retry", "--endpoint", "alpha")
    assert result.exit_code == 0, result.output
    assert "2 deliveries queued again" in result.stdout
    assert {queue.delivery(d).state for d in dead_a} == {"pending"}  # type: ignore[union-attr]
    assert queue.delivery(dead_b[0]).state == "dead"  # type: ignore[union-attr]


def test_dlq_retry_all(setup: Setup, queue: DeliveryQueue) -> None:
    dead = kill(queue, "alpha", 2) + kill(queue, "beta", 2)
    result = setup.invoke("dlq", "retry", "--all")
    assert result.exit_code == 0, result.output
    assert "4 deliveries queued again" in result.stdout
    assert {queue.delivery(d).state for d in dead} == {"pending"}  # type: ignore[union-attr]
    assert queue.deliveries(state="dead") == []


def test_dlq_retry_of_only_unknown_ids_prints_only_the_error(
    setup: Setup, queue: DeliveryQueue
) -> None:
    kill(queue, "alpha", 1)
    result = setup.invoke("dlq", "retry", "missing-id")
    assert result.exit_code == 2, result.output
    assert result.stdout == "", "no '0 deliveries queued again' next to the error"
    assert "no such delivery: missing-id" in result.stderr
    assert "Traceback" not in result.output


def test_dlq_retry_all_with_endpoint_is_refused(setup: Setup, queue: DeliveryQueue) -> None:
    dead = kill(queue, "alpha", 1) + kill(queue, "beta", 1)
    result = setup.invoke("dlq", "retry", "--all", "--endpoint", "alpha")
    assert result.exit_code == 2, result.output
    assert "--all" in result.stderr and "--endpoint alpha" in result.stderr, result.stderr
    assert "one of them" in result.stderr
    assert {queue.delivery(d).state for d in dead} == {"dead"}, "nothing retried"  # type: ignore[union-attr]


def test_dlq_retry_unknown_id_is_a_clear_error(setup: Setup, queue: DeliveryQueue) -> None:
    (known,) = kill(queue, "alpha", 1)
    result = setup.invoke("dlq", "retry", known, "no-such-id")
    assert result.exit_code == 2
    assert "no such delivery: no-such-id" in result.stderr
    assert "Traceback" not in result.output
    assert queue.delivery(known).state == "pending", "the known id is still retried"  # type: ignore[union-attr]


def test_dlq_retry_without_a_target_says_what_to_name(setup: Setup, queue: DeliveryQueue) -> None:
    result = setup.invoke("dlq", "retry")
    assert result.exit_code == 2
    assert "--endpoint" in result.stderr and "--all" in result.stderr


# ---- replay --------------------------------------------------------------------------------


def test_replay_since_creates_new_deliveries_per_matching_endpoint(
    setup: Setup, queue: DeliveryQueue
) -> None:
    recorded = queue.accept(
        [Event(type="shop.order.placed"), Event(type="user.created")], lambda e: []
    )
    assert queue.deliveries() == []
    result = setup.invoke("replay", "--since", "2000-01-01T00:00:00Z")
    assert result.exit_code == 0, result.output
    assert (
        "3 deliveries created" in result.stdout
    )  # shop.order.placed: alpha+beta; user.created: beta
    rows = queue.deliveries()
    pairs = sorted((d.event_id, d.endpoint_id) for d in rows)
    order_id, user_id = (rec.event.id for rec, _ in recorded)
    assert pairs == sorted([(order_id, "alpha"), (order_id, "beta"), (user_id, "beta")])
    assert {d.state for d in rows} == {"pending"}


def test_replay_type_and_until_narrow_the_events(setup: Setup, queue: DeliveryQueue) -> None:
    queue.accept([Event(type="shop.order.placed"), Event(type="user.created")], lambda e: [])
    result = setup.invoke("replay", "--since", "2000-01-01", "--type", "user.*")
    assert result.exit_code == 0, result.output
    assert [d.endpoint_id for d in queue.deliveries()] == ["beta"]
    result = setup.invoke("replay", "--since", "2000-01-01", "--until", "2000-01-02")
    assert result.exit_code == 0 and "0 deliveries created" in result.stdout


def test_replay_dry_run_counts_per_endpoint_and_creates_nothing(
    setup: Setup, queue: DeliveryQueue
) -> None:
    queue.accept(
        [Event(type="shop.order.placed"), Event(type="shop.order.paid"), Event(type="user.x")],
        lambda e: [],
    )
    result = setup.invoke("replay", "--since", "2000-01-01T00:00:00Z", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "dry run: 5 deliveries would be created, none were", lines
    assert [line.split() for line in lines[1:]] == [["alpha", "2"], ["beta", "3"]]
    assert queue.deliveries() == []


def test_replay_waits_for_room_and_never_overfills_the_queue(
    setup: Setup, queue: DeliveryQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """events.queue_size 5: a replay fills the queue to 4 (80%) at most, then waits while a
    worker (here: the test, once the queue is at that mark) delivers what is open."""
    config = {"store": {"url": setup.store_url}, "events": {"queue_size": 5}}
    setup.config.write_text(yaml.safe_dump(config))
    monkeypatch.setattr("tidings.cli.replay.REPLAY_POLL", 0.02)
    queue.accept([Event(type="user.created", data={"n": i}) for i in range(10)], lambda e: [])
    results: list[Any] = []
    replay = threading.Thread(
        target=lambda: results.append(setup.invoke("replay", "--since", "2000-01-01"))
    )
    replay.start()
    peak = delivered = 0
    deadline = time.monotonic() + 30
    try:
        while replay.is_alive() or queue.count_open(100):
            assert time.monotonic() < deadline, f"replay still running; {delivered} delivered"
            if queue.count_open(100) >= 4 or not replay.is_alive():
                claimed = queue.claim(100, 30.0)
                peak = max(peak, len(claimed))
                queue.finish([_delivered(c) for c in claimed])
                delivered += len(claimed)
            else:
                time.sleep(0.005)  # polling the queue, as a worker would
    finally:
        replay.join(30)
    (result,) = results
    assert result.exit_code == 0, result.output
    assert "10 deliveries created" in result.stdout
    assert peak <= 4, f"the replay filled the queue to {peak} open deliveries"
    assert delivered == 10
    assert "waiting for `tidings serve`" in result.stderr, result.stderr
    assert "events.queue_size=5" in result.stderr, result.stderr


def _delivered(c: Claimed) -> Outcome:
    attempt = Attempt(c.delivery.id, 1, time.time(), 0.01, 200, "ok", None)
    return Outcome(c.delivery.id, c.lease_token, attempt, "delivered")


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_replay_bad_time_is_a_clear_error(setup: Setup, queue: DeliveryQueue, option: str) -> None:
    args = ["--since", "2000-01-01T00:00:00Z"] if option == "--until" else []
    result = setup.invoke("replay", *args, option, "last tuesday")
    assert result.exit_code == 2
    assert f"{option}: expected an ISO 8601 time" in result.stderr
    assert "'last tuesday'" in result.stderr and "Traceback" not in result.output
    assert queue.deliveries() == []


# ---- serve ---------------------------------------------------------------------------------


def test_serve_beyond_loopback_without_an_api_key_refuses_to_start(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[object] = []

    def run(self: uvicorn.Server, *args: Any, **kwargs: Any) -> None:
        started.append(self)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    result = setup.invoke("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.exit_code == 2, result.output
    assert "0.0.0.0" in result.stderr and "API key" in result.stderr
    assert "TIDINGS_SERVER__API_KEY" in result.stderr
    assert started == [], "uvicorn must never be started"
    assert not (tmp_path / "tidings.db").exists(), "not even the store is opened"
    # The same command with a key gets past the check (to the stubbed server).
    monkeypatch.setenv("TIDINGS_SERVER__API_KEY", "k-1")
    result = setup.invoke("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.exit_code == 0, result.output
    assert len(started) == 1


def test_serve_on_a_taken_port_says_which_and_touches_no_store(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[object] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: started.append(self))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = setup.invoke("serve", "--port", str(port))
    assert result.exit_code == 2, result.output
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr, result.stderr
    assert "--port" in result.stderr and "server.port" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert started == [], "uvicorn is never started"
    assert not (tmp_path / "tidings.db").exists(), "the store is not opened"


def test_serve_process_on_a_taken_port_exits_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "tidings.yaml"
    config.write_text(yaml.safe_dump({"store": {"url": f"sqlite:///{tmp_path / 'tidings.db'}"}}))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TIDINGS_")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tidings", "--config", str(config), "serve", "--port",
             str(port)],
            check=False, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode != 0, done
    assert f"port {port}" in done.stderr and "--port" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "Errno" not in done.stderr
    assert not (tmp_path / "tidings.db").exists()


def test_dlq_without_a_store_says_where_it_looked_and_creates_nothing(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    missing = tmp_path / "nowhere.db"
    config.write_text(f"store: {{url: 'sqlite:///{missing}'}}\n")
    result = CliRunner().invoke(app, ["--config", str(config), "dlq", "list"])
    assert result.exit_code == 2
    assert "no store at" in result.stderr and str(missing) in result.stderr
    assert not missing.exists()
