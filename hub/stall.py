"""Publisher stall detection: a track that was flowing and stopped.

Sampled on a timer from each up track's packet count, so the per-packet path pays
nothing. Only watched tracks are judged (the room watches the stage: a station off
stage may be paused on purpose, and nobody waits for it).
"""

from __future__ import annotations


class FlowWatch:
    """Whether one track has stalled: it had packets, it is watched, and its count
    has not moved for ``timeout`` seconds. The clock restarts whenever packets
    arrive and when watching starts (a track just called on stage gets its time)."""

    __slots__ = ("changed_at", "count", "stalled", "watched")

    def __init__(self) -> None:
        self.count = 0
        self.changed_at = 0.0
        self.watched = False
        self.stalled = False

    def sample(self, count: int, now: float, timeout: float, watched: bool) -> bool:
        """Take the track's packet count at ``now``; True when ``stalled`` changed."""
        if count != self.count or not watched or not self.watched:
            self.count, self.changed_at, self.watched = count, now, watched
            stalled = False
        else:
            stalled = count > 0 and now - self.changed_at >= timeout
        changed = stalled != self.stalled
        self.stalled = stalled
        return changed
