"""The service guard: skip on a laptop, fail in CI."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import require_service


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_service_skips_loudly_without_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="SKIPPED LOUDLY: fake-db"):
        require_service("fake-db", "127.0.0.1", _closed_port())


def test_unreachable_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI requires every service"):
        require_service("fake-db", "127.0.0.1", _closed_port())


def test_reachable_service_passes() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        require_service("listener", "127.0.0.1", server.getsockname()[1])
