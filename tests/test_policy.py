"""Who receives what, as tables: hub/policy.py decides from a snapshot of the room."""

from __future__ import annotations

import pytest

from hub import policy
from hub.ids import ParticipantID, PublicationID


def member(
    sid: str,
    *sources: str,
    stage: int | None = None,
    moderator: bool = False,
    subscribe: bool = True,
    orders: dict[str, int] | None = None,
) -> policy.Member:
    """``sid`` publishing ``sources`` (publication ids ``<sid>.<source>``)."""
    return policy.Member(
        sid=ParticipantID(sid),
        publications=tuple(
            policy.Pub(
                PublicationID(f"{sid}.{s}"),
                s,  # type: ignore[arg-type]
                "audio" if s == "microphone" else "video",
                (orders or {}).get(s, 0),
            )
            for s in sources
        ),
        can_subscribe=subscribe,
        can_moderate=moderator,
        stage_since=stage,
    )


CENTER = member("center", "camera", "microphone", stage=1, moderator=True)
S1 = member("s1", "camera", "microphone")
S2 = member("s2", "camera", "microphone", stage=5)
VIEWER = member("viewer", subscribe=False)
ROOM = [CENTER, S1, S2, VIEWER]


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        (S1, ["center.camera", "center.microphone", "s2.camera", "s2.microphone"]),
        (S2, ["center.camera", "center.microphone"]),
        (CENTER, ["s1.camera", "s1.microphone", "s2.camera", "s2.microphone"]),
        (VIEWER, []),
    ],
    ids=["station receives the stage", "on stage not itself", "moderator all", "no grant"],
)
def test_receives(who: policy.Member, expected: list[str]) -> None:
    assert policy.receives(who, ROOM) == expected


@pytest.mark.parametrize(
    ("stage", "video", "audio"),
    [
        ([], None, ()),
        ([CENTER], "center.camera", ("center.microphone",)),
        ([CENTER, S2], "s2.camera", ("s2.microphone", "center.microphone")),
        (
            [member("center", "camera", "screen", stage=1, orders={"screen": 9}), S2],
            "center.screen",
            ("s2.microphone",),
        ),
    ],
    ids=["empty", "lecturer", "latest on stage", "latest screen"],
)
def test_program(stage: list[policy.Member], video: str | None, audio: tuple[str, ...]) -> None:
    assert policy.program(stage) == policy.Program(
        PublicationID(video) if video else None, tuple(PublicationID(a) for a in audio)
    )
