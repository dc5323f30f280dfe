"""The program: what households and recordings see and hear of a room's stage.

One rule for every consumer (WHEP viewers through ``hub/policy.py``, live HLS and the
RTMP restream through :mod:`media.stagefeed`, the library through
:mod:`media.processing`), so a household sees the same lecture however it watches.
It lives in ``media/`` because ``media/`` never imports ``hub/``.

- Picture: the screen share most recently started by anyone on stage; without one,
  the camera of the lecturer: the first participant on stage (in stage order) with a
  camera. With no stage, the participants count in the order their tracks started.
- Sound: every microphone on stage, in stage order (the lecturer's first). Every
  consumer hears them all: live HLS and the restream mix them in the room's ffmpeg
  (:mod:`media.stagefeed`), the library over the recording's stage timeline
  (:func:`media.processing.program_timeline`), a WHEP viewer on its audio m-lines;
  one with fewer m-lines than voices hears the current speaker first (the floor of
  ``hub/policy.py``, which moves with hysteresis, not on every packet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from media.frames import Kind, Source


class ProgramTrack(Protocol):
    """What the rule needs of a track (:class:`media.frames.TrackInfo` is one)."""

    @property
    def track_id(self) -> str: ...

    @property
    def participant(self) -> str: ...

    @property
    def source(self) -> Source: ...

    @property
    def kind(self) -> Kind: ...


@dataclass(frozen=True, slots=True)
class Program:
    video: str | None
    """The picture's track id."""
    audio: tuple[str, ...]
    """The voices' track ids, the lecturer's first."""


def _stage_order(tracks: Sequence[ProgramTrack], stage: Sequence[str]) -> list[str]:
    return list(stage) or list(dict.fromkeys(t.participant for t in tracks))


def lecturer(tracks: Sequence[ProgramTrack], stage: Sequence[str]) -> str | None:
    """The first participant on stage with a camera (None if nobody has one)."""
    with_camera = {t.participant for t in tracks if t.source == "camera"}
    return next((p for p in _stage_order(tracks, stage) if p in with_camera), None)


def program(tracks: Sequence[ProgramTrack], stage: Sequence[str]) -> Program:
    """The program among ``tracks`` (in the order they started) for ``stage``
    (participants in stage order)."""
    order = _stage_order(tracks, stage)
    on_stage = set(order)
    screens = [t for t in tracks if t.source == "screen" and t.participant in on_stage]
    video: str | None = screens[-1].track_id if screens else None
    if video is None:
        main = lecturer(tracks, order)
        cameras = [t for t in tracks if t.source == "camera" and t.participant == main]
        video = cameras[-1].track_id if cameras else None
    rank = {p: i for i, p in enumerate(order)}
    voices = sorted(
        (t for t in tracks if t.kind == "audio" and t.participant in on_stage),
        key=lambda t: rank[t.participant],
    )
    return Program(video, tuple(t.track_id for t in voices))
