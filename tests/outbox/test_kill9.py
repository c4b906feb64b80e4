"""SIGKILL of the application process after its commits and before its relay published them:
a relay started afterwards publishes every committed event; no relay publishes an event twice,
and the order per key holds (an event may be published again only by the next relay, repeating
what the killed relay's last claim had already sent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.outbox.conftest import connect, rows, wait_until
from tests.outbox.kill_app import ReceivedTable
from tidings.outbox import Relay

ROOT = Path(__file__).resolve().parents[2]
EVENTS, KEYS = 1000, 20


@pytest.mark.timeout(120)
def test_sigkill_between_commit_and_publish_loses_nothing(db_url: str, tmp_path: Path) -> None:
    conn = connect(db_url)
    conn.execute(
        "CREATE TABLE received (n INTEGER PRIMARY KEY AUTOINCREMENT, relay TEXT, event_id TEXT, "
        "key TEXT, seq INTEGER)"
        if db_url.startswith("sqlite")
        else "CREATE TABLE received (n bigserial PRIMARY KEY, relay text, event_id text, "
        "key text, seq int)"
    )
    conn.commit()
    conn.close()
    log = tmp_path / "app.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.outbox.kill_app", db_url, str(EVENTS), str(KEYS)],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until(
            lambda: "all committed" in log.read_text() or proc.poll() is not None,
            60,
            lambda: log.read_text()[-2000:],
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        wait_until(  # its relay is publishing, slowly: kill it mid-way
            lambda: rows(db_url, "SELECT count(*) FROM received")[0][0] > 0,
            30,
            lambda: log.read_text()[-2000:],
        )
        published = rows(db_url, "SELECT count(*) FROM received")[0][0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = rows(db_url)[0][0]
    assert 0 < published < EVENTS and left > 0, (
        f"the kill must come mid-way: {published} published, {left} rows left"
    )
    target = ReceivedTable(db_url, "after")
    with Relay(db_url, target, poll_interval=0.05, lease=3.0, publish_timeout=2.0):
        wait_until(
            lambda: rows(db_url, "SELECT count(DISTINCT event_id) FROM received")[0][0] == EVENTS,
            60,
            lambda: (
                f"{rows(db_url, 'SELECT count(DISTINCT event_id) FROM received')} of "
                f"{EVENTS} events; {rows(db_url)} rows left"
            ),
        )
        wait_until(lambda: rows(db_url)[0][0] == 0, 10, lambda: f"{rows(db_url)} rows left")
    received = rows(db_url, "SELECT relay, event_id, key, seq FROM received ORDER BY n")
    per_relay: dict[str, list[str]] = defaultdict(list)
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    per_relay_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for relay, event_id, key, seq in received:
        per_relay[relay].append(event_id)
        per_relay_key[(relay, key)].append(seq)
        if event_id not in seen:
            seen.add(event_id)
            first_seen[key].append(seq)
    for relay, ids in per_relay.items():
        assert len(ids) == len(set(ids)), f"relay {relay} published an event twice"
    repeats = len(received) - EVENTS
    assert repeats <= 20, f"{repeats} repeats: more than the killed relay's last claim (20)"
    assert all(s == list(range(1, EVENTS // KEYS + 1)) for s in first_seen.values()), first_seen
    assert all(s == sorted(s) for s in per_relay_key.values())
    print(
        f"kill -9: {published} published before the kill, {left} rows left, "
        f"{repeats} published again by the next relay"
    )
