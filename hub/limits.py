"""How much one address, one connection or one room may open or send.

The numbers are settings (:mod:`hub.settings`); here are the mechanisms: a token
bucket, one per client address, and the limits a room applies to its joins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from hub.settings import Settings


class TokenBucket:
    """Up to ``burst`` at once, then ``rate`` a second: each admission takes a token."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens

    @property
    def full(self) -> bool:
        """Whether a whole burst is available again: the sender paused long enough."""
        return self._refill() >= self.burst

    def take(self) -> bool:
        """Take a token if there is one."""
        if self._refill() < 1:
            return False
        self._tokens -= 1
        return True

    def wait(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1 - self._refill()) / self.rate)


class AddressBuckets:
    """A :class:`TokenBucket` per client address. Full buckets are forgotten once
    there are many, so memory follows the addresses active lately."""

    PRUNE_ABOVE = 1024

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        """How many addresses are remembered."""
        return len(self._buckets)

    def take(self, address: str) -> float | None:
        """None when ``address`` may go ahead; else the seconds it should wait."""
        if len(self._buckets) > self.PRUNE_ABOVE:
            self._buckets = {a: b for a, b in self._buckets.items() if not b.full}
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(self.rate, self.burst, self._clock)
        return None if bucket.take() else bucket.wait()


@dataclass(frozen=True)
class RoomLimits:
    """What a room admits (see the settings of the same meaning)."""

    max_participants: int
    max_viewers: int
    connect_timeout: float
    max_media: int
    hls_players_per_address: int
    stall_timeout: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RoomLimits:
        return cls(
            max_participants=settings.room_max_participants,
            max_viewers=settings.room_max_viewers,
            connect_timeout=settings.peer_connect_timeout,
            max_media=settings.max_media_per_offer,
            hls_players_per_address=settings.hls_players_per_address,
            stall_timeout=settings.publisher_stall_timeout,
        )
