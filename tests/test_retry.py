"""RetryPolicy: the schedule, jitter bounds, which errors retry, and clear errors."""

from __future__ import annotations

import random

import pytest

from tidings import RetryPolicy


def test_exponential_schedule_is_capped() -> None:
    policy = RetryPolicy(max_retries=6, initial_delay=0.5, backoff_factor=3, max_delay=10)
    assert policy.schedule() == [0.5, 1.5, 4.5, 10, 10, 10]


def test_jitter_only_shortens_and_stays_within_its_fraction() -> None:
    policy = RetryPolicy(max_retries=5, initial_delay=2, jitter=0.25, _rng=random.Random(7))
    for n in range(1, 6):
        base = policy.base_delay(n)
        delays = {policy.delay(n) for _ in range(200)}
        assert all(base * 0.75 <= d <= base for d in delays)
        assert len(delays) > 100  # actually random


def test_should_retry_counts_retries_not_attempts() -> None:
    policy = RetryPolicy(max_retries=2)
    err = RuntimeError()
    assert policy.should_retry(1, err) and policy.should_retry(2, err)
    assert not policy.should_retry(3, err)
    assert not RetryPolicy.none().should_retry(1, err)


def test_retry_on_types_and_predicate() -> None:
    by_type = RetryPolicy(retry_on=(TimeoutError,))
    assert by_type.should_retry(1, TimeoutError()) and not by_type.should_retry(1, ValueError())
    by_predicate = RetryPolicy(retry_on=lambda e: "again" in str(e))
    assert by_predicate.should_retry(1, RuntimeError("try again"))
    assert not by_predicate.should_retry(1, RuntimeError("fatal"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1}, "max_retries: expected a whole number >= 0"),
        ({"max_retries": 1.5}, "max_retries: expected a whole number"),
        ({"initial_delay": -1}, "initial_delay: expected seconds >= 0"),
        ({"backoff_factor": 0.5}, "backoff_factor: expected a factor >= 1"),
        ({"jitter": 2}, "jitter: expected a fraction 0..1"),
        ({"initial_delay": 10, "max_delay": 1}, "max_delay (1) is below initial_delay"),
        ({"max_delay": "30s"}, "max_delay: expected seconds >= 0, got '30s'"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)
