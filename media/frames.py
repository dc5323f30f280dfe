"""The seam between ``hub/`` and ``media/``: encoded frames, never decoded here.

``hub/`` produces these from the RTP it forwards; ``media/`` (recorder, live HLS,
restream) consumes them. ``media/`` never imports ``hub/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Codec = Literal["VP8", "H264", "opus"]
Kind = Literal["audio", "video"]
Source = Literal["camera", "microphone", "screen"]


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One complete encoded frame as it came off the wire."""

    codec: Codec
    data: bytes
    """VP8 frame, H.264 Annex-B access unit (with start codes), or one Opus packet."""
    timestamp: int
    """RTP timestamp, already unwrapped to a monotonically increasing integer."""
    clock_rate: int
    """90000 for video, 48000 for Opus."""
    keyframe: bool
    arrival: float
    """``time.time()`` when the frame's last packet arrived at the hub."""


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """What a sink needs to know about one publication it receives."""

    track_id: str
    """The publication's id: stable for the life of the publication."""
    kind: Kind
    codec: Codec
    source: Source
    participant: str
    """The publishing participant's identity (a site code, an ingest name)."""
    label: str
    """Human-readable name of the publisher, for timelines and titles."""


class FrameSink(Protocol):
    """A consumer of encoded frames that is not a browser (recorder, HLS, restream).

    The hub calls these from its event loop: implementations must not block; heavy
    work (muxing, disk writes) goes to a thread or a subprocess.
    """

    def add_track(self, track: TrackInfo) -> None: ...

    def remove_track(self, track_id: str) -> None: ...

    def on_frame(self, track_id: str, frame: EncodedFrame) -> None: ...

    def on_stage_change(self, stage: list[str], at: float) -> None:
        """The stage now holds these participant identities (``at`` is ``time.time()``)."""
        ...

    async def close(self) -> None: ...
