"""Who receives what, as tables: hub/policy.py decides from a snapshot of the room."""

from __future__ import annotations

import pytest

from hub import policy
from hub.ids import ParticipantID, PublicationID
from media.program import Program


def member(
    sid: str,
    *sources: str,
    stage: bool = False,
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
        on_stage=stage,
    )


CENTER = member("center", "camera", "microphone", stage=True, moderator=True)
S1 = member("s1", "camera", "microphone")
S2 = member("s2", "camera", "microphone", stage=True)
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


def test_program_follows_the_one_rule() -> None:
    """The table of the rule is tests/test_program.py; here, that the room's members
    reach it with their publications in the order they started."""
    center = member("center", "camera", "microphone", "screen", stage=True,
                    orders={"screen": 9, "camera": 1, "microphone": 2})  # fmt: skip
    station = member("s2", "screen", "microphone", stage=True, orders={"screen": 5})
    assert policy.program([center, station]) == Program(
        "center.screen", ("center.microphone", "s2.microphone")
    )
    assert policy.program([]) == Program(None, ())
