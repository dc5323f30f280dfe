"""The retransmission budget, by tables: what a down track resends and what it
declines, with the clock passed in."""

from __future__ import annotations

import pytest

from hub.retransmission import (
    BURST,
    DEFAULT_RTT,
    FALLBACK_ESTIMATE,
    KEYFRAME_INTERVAL,
    MAX_AGE,
    MAX_RESENDS,
    MIN_HOLDOFF,
    SHARE,
    RetransmitBudget,
    Verdict,
)

SEND, REPEATED, TOO_OLD, OVER = (
    Verdict.SEND,
    Verdict.REPEATED,
    Verdict.TOO_OLD,
    Verdict.OVER_BUDGET,
)


@pytest.mark.parametrize(
    ("rtt", "nacks", "expected"),
    [
        # (seconds after the first NACK, verdict)
        (None, [0.0, 0.05, DEFAULT_RTT + 0.001], [SEND, REPEATED, SEND]),
        (0.3, [0.0, 0.2, 0.31], [SEND, REPEATED, SEND]),
        (0.001, [0.0, 0.01, MIN_HOLDOFF + 0.001], [SEND, REPEATED, SEND]),
        (0.01, [0.0, 0.1, 0.2, 0.3, 0.4], [SEND, SEND, SEND, REPEATED, REPEATED]),
    ],
)
def test_a_packet_is_resent_at_most_three_times_and_once_per_round_trip(
    rtt: float | None, nacks: list[float], expected: list[Verdict]
) -> None:
    assert MAX_RESENDS == 3
    budget = RetransmitBudget()
    budget.rtt = rtt
    assert [budget.decide(7, 0.0, 1000, 100.0 + t) for t in nacks] == expected


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0.0, SEND), (MAX_AGE - 0.01, SEND), (MAX_AGE + 0.01, TOO_OLD), (30.0, TOO_OLD)],
)
def test_nothing_older_than_the_receiver_can_use_is_resent(age: float, expected: Verdict) -> None:
    assert RetransmitBudget().decide(1, age, 1000, 5.0) is expected


@pytest.mark.parametrize(
    ("estimate", "seconds", "size"),
    [(700_000, 20, 1200), (2_000_000, 5, 1200), (300_000, 10, 200)],
)
def test_a_flood_of_nacks_is_held_to_a_share_of_the_estimate(
    estimate: int, seconds: int, size: int
) -> None:
    budget = RetransmitBudget()
    budget.estimate_bps = estimate
    budget.rtt = 0.3
    sent = 0
    seq = 0
    # Every packet lost and NACKed at 1,000 packets/s, each NACK repeated.
    for step in range(seconds * 1000):
        now = step / 1000
        for s in (seq, seq - 1, seq - 2):
            if budget.decide(s & 0xFFFF, 0.0, size, now) is SEND:
                sent += size
        seq += 1
    allowed = SHARE * estimate / 8 * (seconds + BURST)
    assert sent <= allowed
    assert sent >= 0.9 * SHARE * estimate / 8 * seconds  # and the share is used


def test_without_an_estimate_the_budget_follows_what_was_sent() -> None:
    budget = RetransmitBudget()
    assert budget.estimate() == FALLBACK_ESTIMATE
    budget.note_media(0, 0.0)
    budget.note_media(100_000, 0.1)  # too short a window to say
    assert budget.estimate() == FALLBACK_ESTIMATE
    budget.note_media(250_000, 0.5)  # 4 Mbps sent
    assert budget.estimate() == 4_000_000
    budget.estimate_bps = 600_000  # the subscriber's REMB replaces it
    assert budget.estimate() == 600_000


def test_a_refused_loss_asks_for_a_keyframe_at_most_once_a_second() -> None:
    assert TOO_OLD.needs_keyframe and OVER.needs_keyframe
    assert not REPEATED.needs_keyframe and not SEND.needs_keyframe
    budget = RetransmitBudget()
    asks = [budget.keyframe_due(t / 10) for t in range(25)]
    assert sum(asks) == 3 and KEYFRAME_INTERVAL == 1.0


def test_the_resend_log_stays_bounded() -> None:
    budget = RetransmitBudget()
    budget.estimate_bps = 10**9
    for seq in range(20_000):
        budget.decide(seq, 0.0, 100, seq / 1000)
    assert len(budget._log) <= 4096
