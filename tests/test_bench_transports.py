"""The transport benchmark runs end to end (memory and Redis, ``--quick``) and counts everything.

Figures live in BENCHMARKS.md; this only proves the benchmark works: every Redis row (tidings,
the raw redis-py floor, FastStream) has a figure, the latency rows print, and every count matched
(the benchmark exits 1 on a lost, duplicated or stray event).
"""

from __future__ import annotations

import re

import pytest

from tests.benchrun import one_row, run_bench
from tests.conftest import require_service

RATE = r"[\d,]+/s"


@pytest.mark.timeout(60)
def test_transports_benchmark_quick_memory_redis_counts_every_event() -> None:
    require_service("Redis", "127.0.0.1", 6379)
    out = run_bench("transports", "--quick", "--only", "memory,redis", timeout=55)
    assert "delivery check: every contender that ran handled every event exactly once" in out
    assert "DELIVERY ERRORS" not in out

    memory = one_row(out, "transports.memory")
    assert re.search(rf"^transports\.memory: tidings {RATE} \(min", memory), memory
    assert re.search(rf"asyncio\.Queue floor {RATE} \(\d\.\d\d\)", memory), memory
    redis = one_row(out, "transports.redis")
    assert re.search(rf"^transports\.redis: tidings {RATE} \(min", redis), redis
    assert re.search(rf"raw redis-py floor {RATE} \(\d+\.\d\d\)", redis), redis
    assert re.search(rf"FastStream {RATE} \([\d.]+x\)", redis), redis  # installed: never skipped
    for name in ("transports.memory.latency", "transports.redis.latency"):
        lat = one_row(out, name)
        assert "offered 1,000/s" in lat and "p50 " in lat and "p99 " in lat, lat
    assert "1 round of 2,000 events" in out
