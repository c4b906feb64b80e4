"""Every example under examples/ runs and does what its docs say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart_publishes_typed_events_through_the_bus() -> None:
    out = run_example("quickstart.py")
    assert "closed: drained: nothing left unfinished" in out
    assert "audit trail: 4 events" in out
    assert "receipts: 3" in out
    assert out.count("causation=01") == 3
    assert "dead letter: payment_link.archived -> flaky-webhook: webhook receiver is down" in out
    assert '"specversion":"1.0"' in out and '"type":"payment_link.created"' in out


def test_event_sourcing_example_rebuilds_projects_and_replays() -> None:
    out = run_example("event_sourcing.py")
    assert "rebuilt: owner=ada balance=120 v4" in out
    assert "conflict: expected v2, stream at v4" in out
    assert "projection: {'account-1': 125} checkpoint=5" in out
    assert "resumed: {'account-1': 126}" in out
    assert "replayed 6 events: {'account-1': 126}" in out
    assert "bus saw 6 events after commit" in out


def test_transport_memory_example_moves_events_through_a_group() -> None:
    out = run_example("transport_memory.py")
    assert "audit saw 41 events" in out
    assert "billed 20 orders, each once: True" in out
    assert "both billing workers took part: True" in out
    assert (
        "dead letter: order.placed after 2 attempts: ValueError: order bad: negative amount -1.0"
        in out
    )
    assert "closed: every bus drained" in out


def test_every_example_is_covered_by_a_test() -> None:
    # webhook_receiver.py runs against a real `tidings serve` in tests/server/test_serve_process.py
    tested = {"quickstart.py", "event_sourcing.py", "transport_memory.py", "webhook_receiver.py"}
    assert {p.name for p in (ROOT / "examples").glob("*.py")} <= tested
