"""pytest fixtures for applications that publish with tidings (registered by entry point).

Every bus a fixture hands out is closed at teardown, so a test that leaves work queued fails
loudly instead of leaking worker threads into the next test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tidings.bus import Bus
from tidings.testing import FakeClock, NoopBus, RecordingBus


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock that moves only on ``advance()``; pass it as ``Bus(clock=...)``."""
    return FakeClock()


@pytest.fixture
def recording_bus(fake_clock: FakeClock) -> Iterator[RecordingBus]:
    """An inline RecordingBus on the fake clock."""
    bus = RecordingBus(clock=fake_clock)
    yield bus
    bus.close(timeout=5.0)


@pytest.fixture
def noop_bus() -> Iterator[NoopBus]:
    bus = NoopBus()
    yield bus
    bus.close(timeout=5.0)


@pytest.fixture
def bus_factory() -> Iterator[Callable[..., Bus]]:
    """Make buses with any options (``bus_factory(mode="async", workers=2)``); all closed after."""
    made: list[Bus] = []

    def make(cls: type[Bus] = Bus, **options: Any) -> Bus:
        bus = cls(**options)
        made.append(bus)
        return bus

    yield make
    unfinished = [report for report in (b.close(timeout=5.0) for b in made) if not report]
    if unfinished:
        pytest.fail("bus left unfinished work at teardown: " + unfinished[0].summary())
