"""TokenBucket and CircuitBreaker: the per-endpoint pacing the delivery worker relies on.

Both take a clock, so the arithmetic is checked on a fake one; only the order and spacing of
``take()`` waiters need real time (it sleeps), with bounds generous enough for a busy CI box.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tidings.testing import FakeClock
from tidings.webhooks.limits import CircuitBreaker, TokenBucket

# ---- TokenBucket ---------------------------------------------------------------------------


def test_bucket_rejects_a_rate_that_is_not_positive() -> None:
    for rate in (0, -1.5):
        with pytest.raises(ValueError, match=r"rate: expected > 0"):
            TokenBucket(rate)


def test_burst_is_available_at_once_then_refills_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=3, clock=clock.monotonic)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.05)  # half a token
    assert not bucket.try_take()
    clock.advance(0.06)
    assert bucket.try_take()
    assert not bucket.try_take()


def test_refill_never_exceeds_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst=2, clock=clock.monotonic)
    assert bucket.try_take() and bucket.try_take()
    clock.advance(3600)  # an idle hour earns no more than the bucket holds
    assert [bucket.try_take() for _ in range(3)] == [True, True, False]


def test_default_burst_is_the_rate_rounded_down_but_at_least_one() -> None:
    assert TokenBucket(5).burst == 5
    assert TokenBucket(2.7).burst == 2
    assert TokenBucket(0.2).burst == 1


def test_a_slow_rate_below_one_per_second_paces_in_seconds() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0.5, clock=clock.monotonic)  # one request per two seconds
    assert bucket.try_take()
    clock.advance(1.9)
    assert not bucket.try_take()
    clock.advance(0.2)
    assert bucket.try_take()


def test_pause_after_retry_after_gives_no_token_until_it_ends() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=5, clock=clock.monotonic)
    bucket.pause(2.0)
    assert not bucket.try_take(), "a full bucket is emptied by Retry-After"
    clock.advance(1.9)
    assert not bucket.try_take()
    clock.advance(0.25)  # 2.0 s paused + 0.1 s for one token at 10/s
    assert bucket.try_take()
    assert not bucket.try_take(), "the pause does not refill the burst at its end"


def test_a_shorter_pause_never_shortens_a_longer_one() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=1, clock=clock.monotonic)
    bucket.pause(5.0)
    bucket.pause(0.5)
    clock.advance(1.0)
    assert not bucket.try_take()
    clock.advance(4.2)
    assert bucket.try_take()


async def test_take_waits_for_a_token_at_the_configured_rate() -> None:
    bucket = TokenBucket(20, burst=1)  # one token every 50 ms
    started = time.monotonic()
    for _ in range(5):
        await bucket.take()
    elapsed = time.monotonic() - started
    assert 0.18 <= elapsed < 1.5, f"5 takes at 20/s with burst 1 took {elapsed:.3f}s"


async def test_waiters_are_served_in_arrival_order() -> None:
    bucket = TokenBucket(40, burst=1)
    assert bucket.try_take()  # empty: every waiter below has to queue
    served: list[int] = []

    async def waiter(n: int) -> None:
        await bucket.take()
        served.append(n)

    tasks = []
    for n in range(6):
        tasks.append(asyncio.ensure_future(waiter(n)))
        await asyncio.sleep(0)  # let it reach the bucket before the next one arrives
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert served == list(range(6))


async def test_take_honours_a_pause() -> None:
    bucket = TokenBucket(50, burst=5)
    bucket.pause(0.3)
    started = time.monotonic()
    await bucket.take()
    elapsed = time.monotonic() - started
    assert 0.28 <= elapsed < 2.0, f"first token after a 0.3 s pause came after {elapsed:.3f}s"


# ---- CircuitBreaker ------------------------------------------------------------------------


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.threshold):
        breaker.failure()


def test_stays_closed_below_the_threshold() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, cooldown=5, clock=clock.monotonic)
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed"
    assert breaker.allows() and breaker.claimable()


def test_a_success_resets_the_count_of_failures_in_a_row() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, cooldown=5, clock=clock.monotonic)
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed", "failures must be in a row to open the circuit"


def test_opens_at_the_threshold_and_refuses_until_the_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, cooldown=5, clock=clock.monotonic)
    trip(breaker)
    assert breaker.state == "open"
    assert not breaker.allows() and not breaker.claimable()
    clock.advance(4.9)
    assert breaker.state == "open" and not breaker.allows()
    clock.advance(0.2)
    assert breaker.state == "half-open"


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, cooldown=1, clock=clock.monotonic)
    trip(breaker)
    clock.advance(1.0)
    assert breaker.claimable()
    assert breaker.allows(), "the probe"
    assert not breaker.allows(), "a second request while the probe is out"
    assert not breaker.claimable(), "nothing more is claimed while the probe is out"


def test_probe_success_closes_and_restores_the_base_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown=1, max_cooldown=60, clock=clock.monotonic)
    breaker.failure()
    clock.advance(1.0)
    assert breaker.allows()
    breaker.failure()  # probe fails: cooldown 2
    clock.advance(2.0)
    assert breaker.allows()
    breaker.success()
    assert breaker.state == "closed" and breaker.cooldown == 1
    assert breaker.failures == 0 and breaker.failing_since is None
    assert breaker.allows() and breaker.allows(), "closed: no probe limit"


def test_probe_failure_reopens_for_twice_as_long_up_to_the_maximum() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown=1, max_cooldown=5, clock=clock.monotonic)
    breaker.failure()
    seen: list[float] = []
    for _ in range(5):
        clock.advance(breaker.cooldown)
        assert breaker.state == "half-open"
        assert breaker.allows()
        breaker.failure()
        assert breaker.state == "open", "a failed probe opens the circuit again at once"
        seen.append(breaker.cooldown)
    assert seen == [2, 4, 5, 5, 5]
    clock.advance(4.9)
    assert breaker.state == "open", "the doubled cooldown counts from the failed probe"


def since(breaker: CircuitBreaker) -> float | None:
    return breaker.failing_since


def test_failing_since_marks_the_start_of_the_run_of_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, cooldown=1, clock=clock.monotonic)
    assert since(breaker) is None
    before = time.time()
    breaker.failure()
    first = since(breaker)
    assert first is not None and before <= first <= time.time()
    breaker.failure()
    clock.advance(1)
    breaker.allows()
    breaker.failure()
    assert since(breaker) == first, "later failures keep the start of the run"
    clock.advance(breaker.cooldown)
    breaker.allows()
    breaker.success()
    assert since(breaker) is None
    breaker.failure()
    restarted = since(breaker)
    assert restarted is not None and restarted >= first


def test_random_failures_among_successes_do_not_open_the_circuit() -> None:
    """Five failures in a row among 50 concurrent requests happen by chance at a 30% error
    rate; the breaker opens only when failures are also most of the recent outcomes."""
    breaker = CircuitBreaker(threshold=5, window=20, min_ratio=0.8)
    for _ in range(15):
        breaker.success()
    for _ in range(5):
        breaker.failure()
    assert breaker.state == "closed", "5 of the last 20 failed: a flaky receiver, not a dead one"
    for _ in range(11):
        breaker.failure()
    assert breaker.state == "open", "16 of the last 20 failed"
