"""Audio first: when a subscriber's link cannot carry a video track, the video yields.

Pure logic, with the clock passed in. A down track feeds it each estimate the
subscriber sends (REMB, bits/s, its part for this track) and the rate the track
sends; it answers whether the video should be held. Held, the link carries the
subscriber's audio alone instead of a video it cannot decode in time and the audio
lost with it. Nothing measures the link while the video is held (an estimate follows
what arrives), so it is tried again after a back-off, longer each time it yields
again soon after. A retried video starts from the estimate the link had when it
yielded (a receiver's estimator keeps its last figure while nothing arrives, and
grows it by at most about 8 % a second): an estimate that is rising is a link
carrying more than it did, and is given its time; one that stays low is not.
"""

from __future__ import annotations

YIELD_SHARE = 0.5
"""Video yields when the estimate stays below this share of what it sends: a link
that carries half of a stream delivers none of its frames in time."""
YIELD_AFTER = 3.0
"""Seconds the estimate must stay that low: a dip is not a link."""
RISING = 1.1
"""An estimate that grew by this factor since it first fell low is rising: the link
carries what is sent (an overused link's estimate falls or stays), and the wait
starts over. libwebrtc's grows 8 % a second at most: 26 % in :data:`YIELD_AFTER`."""
MIN_MEDIA_BPS = 100_000
"""Below this a video track never yields (a thumbnail costs about what audio does)."""
RETRY_AFTER = 8.0
"""Seconds held before the video is tried again, the first time."""
MAX_RETRY_AFTER = 64.0
STAYED_UP = 30.0
"""Seconds a retried video must last for the back-off to start over."""


class VideoYield:
    """One video down track's decision: held, or not."""

    __slots__ = ("_low_from", "_low_since", "_resumed_at", "_yielded_at", "held", "retry_after")

    def __init__(self) -> None:
        self.held = False
        self._low_since: float | None = None
        self._low_from = 0.0
        """The estimate when it fell (or last rose) under the share."""
        self._yielded_at = 0.0
        self._resumed_at: float | None = None
        self.retry_after = RETRY_AFTER
        """Seconds the video stays held once it yields."""

    def update(self, estimate_bps: float | None, media_bps: float, now: float) -> bool:
        """Whether the video should be held now, after this estimate (None: no new one)."""
        if self.held:
            if now - self._yielded_at >= self.retry_after:
                self.held = False
                self._resumed_at = now
                self._low_since = None
            return self.held
        if (
            self._resumed_at is not None
            and now - self._resumed_at >= STAYED_UP
            and self.retry_after > RETRY_AFTER
        ):
            self.retry_after = RETRY_AFTER
        if estimate_bps is None:
            return False
        if media_bps < MIN_MEDIA_BPS or estimate_bps >= YIELD_SHARE * media_bps:
            self._low_since = None
            return False
        if self._low_since is None or estimate_bps >= RISING * self._low_from:
            self._low_since, self._low_from = now, estimate_bps
        if now - self._low_since < YIELD_AFTER:
            return False
        self.held = True
        if self._resumed_at is not None and now - self._resumed_at < STAYED_UP:
            self.retry_after = min(MAX_RETRY_AFTER, self.retry_after * 2)
        self._yielded_at = now
        self._low_since = None
        return True
