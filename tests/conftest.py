"""Shared test helpers.

Service-backed tests call ``require_service(name, host, port)``: on a developer laptop without
that server they skip with a loud reason; in CI (``CI`` set) they fail, because CI machines run
every service and a skip there would hide a broken setup.
"""

from __future__ import annotations

import os
import socket

import pytest


def require_service(name: str, host: str, port: int, timeout: float = 1.0) -> None:
    """Skip (laptop) or fail (CI) unless ``host:port`` accepts TCP connections."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        reason = f"{name} is not reachable at {host}:{port} ({exc}); start it to run this test"
    if os.environ.get("CI"):
        pytest.fail(f"CI requires every service: {reason}", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {reason}")
