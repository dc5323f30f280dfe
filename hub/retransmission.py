"""How much the hub resends to one subscriber: the retransmission budget.

Pure logic, with the clock passed in. A down track asks :meth:`RetransmitBudget.decide`
before each resend; the answer is as libwebrtc's and mediasoup's senders give it: a
packet at most :data:`MAX_RESENDS` times and not again within about a round trip,
nothing the receiver can no longer use, and all of it within a share of the
subscriber's estimated bandwidth. A hub that answered every NACK filled a 700 kbit
village link twenty times over with resends, and no keyframe got through (issue 15).
"""

from __future__ import annotations

import enum

MAX_RESENDS = 3
"""A packet is resent at most this many times: a link that lost it three times
more will not deliver it in time either."""
MAX_AGE = 1.0
"""Media seconds behind the newest packet sent after which a packet is not resent:
the receiver's jitter buffer has moved on (or asks for a keyframe)."""
DEFAULT_RTT = 0.1
"""Round trip assumed before the subscriber's first receiver report."""
MIN_HOLDOFF = 0.02
"""Shortest wait before a packet is resent again, whatever the round trip: a
receiver repeats its whole missing list at each new loss."""
SHARE = 0.25
"""Share of the subscriber's estimated bandwidth retransmissions may take."""
BURST = 0.5
"""Seconds of budget that may be spent at once (the bucket's depth): a burst of
loss is answered at once, a steady flood only at the share."""
FALLBACK_ESTIMATE = 1_000_000
"""Bits/s assumed before the subscriber's first estimate (REMB), when the media
sent so far says less (see :meth:`RetransmitBudget.estimate`)."""
MEDIA_WINDOW = 0.25
"""Seconds over which the send rate standing in for an estimate is measured: short,
so the first losses of a subscription are answered at its real rate."""
KEYFRAME_INTERVAL = 1.0
"""A subscriber whose losses the budget cannot repair asks its publisher for a
keyframe at most once per this many seconds."""
_LOG_LIMIT = 4096
"""Resend records kept per down track; a larger log is pruned of old entries."""


class Verdict(enum.Enum):
    """What :meth:`RetransmitBudget.decide` answers for one NACKed packet."""

    SEND = "send"
    REPEATED = "repeated"
    """Resent within the last round trip, or already :data:`MAX_RESENDS` times."""
    TOO_OLD = "too_old"
    """Older than :data:`MAX_AGE`: the receiver needs a keyframe, not this packet."""
    OVER_BUDGET = "over_budget"
    """Resending would pass the share: the losses are more than resends can repair."""

    @property
    def needs_keyframe(self) -> bool:
        return self is Verdict.TOO_OLD or self is Verdict.OVER_BUDGET


class RetransmitBudget:
    """One down track's resends: per packet counts and times, and a token bucket of
    bytes refilled at :data:`SHARE` of the estimate."""

    __slots__ = (
        "_keyframe_at",
        "_log",
        "_media_at",
        "_media_bytes",
        "_refilled",
        "_tokens",
        "estimate_bps",
        "max_age",
        "max_resends",
        "media_bps",
        "rtt",
        "share",
    )

    def __init__(
        self,
        share: float = SHARE,
        max_resends: int = MAX_RESENDS,
        max_age: float = MAX_AGE,
    ) -> None:
        self.share = share
        self.max_resends = max_resends
        self.max_age = max_age
        self.rtt: float | None = None
        """Seconds, from the subscriber's receiver reports."""
        self.estimate_bps: int | None = None
        """This track's part of the subscriber's REMB, bits/s."""
        self._log: dict[int, tuple[int, float]] = {}
        self._tokens = 0.0
        self._refilled: float | None = None
        self._media_at: float | None = None
        self._media_bytes = 0
        self.media_bps = 0.0
        """What the down track sent, bits/s, over the last :data:`MEDIA_WINDOW`."""
        self._keyframe_at: float | None = None

    def note_media(self, bytes_sent: int, now: float) -> None:
        """The down track's byte counter: its send rate stands in for an estimate the
        subscriber has not given yet."""
        if self._media_at is None:
            self._media_at, self._media_bytes = now, bytes_sent
            return
        elapsed = now - self._media_at
        if elapsed >= MEDIA_WINDOW:
            self.media_bps = (bytes_sent - self._media_bytes) * 8 / elapsed
            self._media_at, self._media_bytes = now, bytes_sent

    def estimate(self) -> float:
        """Bits/s the subscriber's link is taken to carry for this track."""
        if self.estimate_bps is not None:
            return float(self.estimate_bps)
        return max(self.media_bps, float(FALLBACK_ESTIMATE))

    def holdoff(self) -> float:
        return max(MIN_HOLDOFF, self.rtt if self.rtt is not None else DEFAULT_RTT)

    def decide(self, seq: int, age: float, size: int, now: float) -> Verdict:
        """May packet ``seq`` (``size`` bytes, ``age`` media seconds behind the newest
        sent) be resent now? A SEND is counted: the caller sends it."""
        if age > self.max_age:
            return Verdict.TOO_OLD
        count, last = self._log.get(seq, (0, -1e9))
        if count >= self.max_resends or now - last < self.holdoff():
            return Verdict.REPEATED
        self._refill(now)
        if size > self._tokens:
            return Verdict.OVER_BUDGET
        self._tokens -= size
        if len(self._log) >= _LOG_LIMIT:
            self._prune(now)
        self._log[seq] = (count + 1, now)
        return Verdict.SEND

    def keyframe_due(self, now: float) -> bool:
        """Whether a loss the budget refused may ask for a keyframe now (counted)."""
        if self._keyframe_at is not None and now - self._keyframe_at < KEYFRAME_INTERVAL:
            return False
        self._keyframe_at = now
        return True

    def _refill(self, now: float) -> None:
        rate = self.share * self.estimate() / 8  # bytes/s
        depth = rate * BURST
        if self._refilled is None:
            self._tokens = depth
        else:
            self._tokens = min(depth, self._tokens + rate * (now - self._refilled))
        self._refilled = now

    def _prune(self, now: float) -> None:
        # A record older than MAX_AGE answers no NACK any more: the age check comes first.
        horizon = now - 2 * self.max_age
        self._log = {s: e for s, e in self._log.items() if e[1] >= horizon}
        if len(self._log) >= _LOG_LIMIT:
            self._log.clear()
