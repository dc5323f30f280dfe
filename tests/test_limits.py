"""Token buckets on a clock the test moves; limits checked when the settings load."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hub.limits import AddressBuckets, TokenBucket
from hub.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take() and not bucket.take()
    assert not bucket.full
    clock.now += 10  # a long pause refills it to the burst, no further
    assert bucket.full
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 3), (-1.0, 3), (1.0, 0)])
def test_a_bucket_needs_a_rate_and_a_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_address_buckets_are_separate_and_forgotten_when_full() -> None:
    clock = Clock()
    buckets = AddressBuckets(rate=1.0, burst=1, clock=clock)
    assert buckets.take("10.0.0.1") is None
    assert buckets.take("10.0.0.1") == pytest.approx(1.0)
    assert buckets.take("10.0.0.2") is None
    for n in range(AddressBuckets.PRUNE_ABOVE):
        buckets.take(f"10.1.{n // 256}.{n % 256}")
    clock.now += 5  # every bucket is full again: the next take prunes them all
    assert buckets.take("10.0.0.3") is None
    assert len(buckets) == 1


@pytest.mark.parametrize(
    "setting",
    [
        {"signaling_rate": 0},
        {"signaling_burst": 0},
        {"chat_per_minute": 0},
        {"anonymous_whep_per_minute": -1},
        {"peer_connect_timeout": 0},
        {"join_timeout": -5},
        {"room_max_participants": 0},
    ],
)
def test_a_limit_that_would_shut_everyone_out_is_refused_at_start(
    setting: dict[str, float],
) -> None:
    with pytest.raises(ValidationError):
        Settings(**setting)  # type: ignore[arg-type]
