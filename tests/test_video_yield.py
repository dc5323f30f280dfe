"""Video yields first, by tables: when a subscriber's estimate cannot carry a video
track it is held, and tried again after a back-off that grows while it keeps failing."""

from __future__ import annotations

import pytest

from hub.video_yield import (
    MAX_RETRY_AFTER,
    RETRY_AFTER,
    STAYED_UP,
    YIELD_AFTER,
    VideoYield,
)

MEDIA = 1_500_000


@pytest.mark.parametrize(
    ("estimates", "expected"),
    [
        # (seconds, estimate bits/s) -> held after each
        ([(0, 3_000_000), (1, 2_000_000), (5, 1_600_000)], [False, False, False]),
        ([(0, 600_000), (1, 600_000), (2, 600_000), (3, 600_000)], [False, False, False, True]),
        ([(0, 600_000), (2, 2_000_000), (3, 600_000), (5, 600_000)], [False] * 4),  # a dip
        ([(0, 760_000), (4, 760_000)], [False, False]),  # just over half: carried
        ([(0, 740_000), (3, 740_000), (4, None)], [False, True, True]),
    ],
)
def test_video_yields_when_the_estimate_stays_under_half_of_it(
    estimates: list[tuple[float, int | None]], expected: list[bool]
) -> None:
    fit = VideoYield()
    assert [fit.update(e, MEDIA, 100 + t) for t, e in estimates] == expected


def test_a_thumbnail_never_yields() -> None:
    fit = VideoYield()
    assert not any(fit.update(10_000, 90_000, t) for t in range(10))


def test_held_video_is_tried_again_later_and_later_while_it_fails() -> None:
    fit = VideoYield()
    now = 0.0

    def starve() -> float:
        start = now
        while not fit.update(100_000, MEDIA, now):
            assert now - start <= YIELD_AFTER
            nudge()
        return now

    def nudge() -> None:
        nonlocal now
        now += 0.5

    waits = []
    for _ in range(6):
        held_at = starve()
        while fit.update(None, MEDIA, now):
            nudge()
        waits.append(now - held_at)
    assert waits[0] == RETRY_AFTER
    assert waits == sorted(waits) and waits[-1] == MAX_RETRY_AFTER
    # Once a retried video lasts, the back-off starts over.
    now += STAYED_UP
    assert not fit.update(5_000_000, MEDIA, now)
    held_at = starve()
    while fit.update(None, MEDIA, now):
        nudge()
    assert now - held_at == RETRY_AFTER


def test_a_retried_video_whose_estimate_rises_is_kept() -> None:
    """Tried again, a video starts from the estimate its link had when it yielded
    (held, nothing arrived to change it): risen as a receiver's estimator lets it
    (8 % a second) it is a link carrying the stream, and the video stays; the same
    estimate staying low yields again at once its wait is over."""
    for rising, expected in ((1.08, False), (1.0, True), (0.9, True)):
        fit = VideoYield()
        now = 0.0
        while not fit.update(300_000, MEDIA, now):
            now += 0.5
        now += RETRY_AFTER
        assert not fit.update(None, MEDIA, now)
        estimate = 300_000.0
        held = False
        for _ in range(20):  # ten seconds
            now += 0.5
            estimate *= rising**0.5
            held = held or fit.update(estimate, MEDIA, now)
        assert held is expected, rising
