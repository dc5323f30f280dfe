"""The one program rule (media/program.py), as a table: what WHEP viewers, live HLS,
the restream and the library show and play of a stage. How each consumer follows it
over time: tests/test_stagefeed.py and tests/test_room_media.py (live HLS hears every
stage voice), tests/test_processing.py (the library's program timeline),
tests/test_policy.py and tests/test_whip.py (a one-track WHEP viewer's floor)."""

from __future__ import annotations

import pytest

from media.frames import TrackInfo
from media.program import Program, lecturer, program


def track(participant: str, source: str) -> TrackInfo:
    kind = "audio" if source == "microphone" else "video"
    codec = "opus" if kind == "audio" else "H264"
    return TrackInfo(f"{participant}-{source}", kind, codec, source, participant, participant)  # type: ignore[arg-type]


CAM = track("center", "camera")
MIC = track("center", "microphone")
SCREEN = track("center", "screen")
ST_CAM = track("st-042", "camera")
ST_MIC = track("st-042", "microphone")
ST_SCREEN = track("st-042", "screen")
OFF_MIC = track("st-007", "microphone")


@pytest.mark.parametrize(
    ("tracks", "stage", "expected"),
    [
        ([], [], Program(None, ())),
        # No stage known: the participants in the order their tracks started.
        ([CAM, MIC], [], Program("center-camera", ("center-microphone",))),
        # The lecturer is the first on stage with a camera, whoever published first.
        ([ST_CAM, CAM, MIC], ["center", "st-042"],
         Program("center-camera", ("center-microphone",))),
        ([ST_CAM, ST_MIC, CAM, MIC], ["center", "st-042"],
         Program("center-camera", ("center-microphone", "st-042-microphone"))),
        # A lecturer without a camera yet: the next on stage with one.
        ([MIC, ST_CAM], ["center", "st-042"], Program("st-042-camera", ("center-microphone",))),
        ([CAM, MIC, SCREEN], ["center"], Program("center-screen", ("center-microphone",))),
        # A station on stage shares its screen: the screen; every stage voice, the lecturer's first.
        ([CAM, MIC, ST_SCREEN, ST_MIC], ["center", "st-042"],
         Program("st-042-screen", ("center-microphone", "st-042-microphone"))),
        # The latest screen share wins.
        ([CAM, ST_SCREEN, SCREEN], ["center", "st-042"], Program("center-screen", ())),
        ([CAM, SCREEN, ST_SCREEN], ["center", "st-042"], Program("st-042-screen", ())),
        # A station called on stage to speak (a microphone only) is heard, the
        # lecturer still seen; voices go in stage order, whoever published first.
        ([ST_MIC, CAM, MIC], ["center", "st-042"],
         Program("center-camera", ("center-microphone", "st-042-microphone"))),
        # Sent back, it is no longer heard.
        ([ST_MIC, CAM, MIC], ["center"], Program("center-camera", ("center-microphone",))),
        # Off stage: neither its screen nor its voice.
        ([CAM, MIC, ST_SCREEN, OFF_MIC], ["center"],
         Program("center-camera", ("center-microphone",))),
        ([CAM], ["center"], Program("center-camera", ())),
    ],
)  # fmt: skip
def test_program(tracks: list[TrackInfo], stage: list[str], expected: Program) -> None:
    assert program(tracks, stage) == expected


@pytest.mark.parametrize(
    ("tracks", "stage", "expected"),
    [
        ([CAM, ST_CAM], ["st-042", "center"], "st-042"),
        ([MIC, ST_CAM], ["center", "st-042"], "st-042"),
        ([ST_CAM, CAM], [], "st-042"),
        ([MIC, SCREEN], ["center"], None),
    ],
)
def test_lecturer(tracks: list[TrackInfo], stage: list[str], expected: str | None) -> None:
    assert lecturer(tracks, stage) == expected
