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
    hand: bool = False,
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
        hand_raised=hand,
    )


def view(tiles: str = "", listen: str = "") -> policy.View:
    return policy.View(
        frozenset(ParticipantID(t) for t in tiles.split()),
        frozenset(ParticipantID(t) for t in listen.split()),
    )


CENTER = member("center", "camera", "microphone", stage=True, moderator=True)
S1 = member("s1", "camera", "microphone")
S2 = member("s2", "camera", "microphone", stage=True)
S3 = member("s3", "camera", "microphone", hand=True)
S4 = member("s4", "camera", "screen", "microphone")
VIEWER = member("viewer", subscribe=False)
ROOM = [CENTER, S1, S2, S3, S4, VIEWER]
STAGE = ["s2.camera", "s2.microphone"]


@pytest.mark.parametrize(
    ("who", "views", "expected"),
    [
        (S1, {}, ["center.camera", "center.microphone", *STAGE]),
        (S2, {}, ["center.camera", "center.microphone"]),
        # Someone else's raised hand or a console's view changes nothing for a station.
        (S1, {"center": view("s1 s3", "s1")}, ["center.camera", "center.microphone", *STAGE]),
        (VIEWER, {}, []),
        # A console that said nothing: its first page (everyone off stage here); voices
        # only of raised hands.
        (CENTER, {}, ["s1.camera", *STAGE, "s3.camera", "s3.microphone", "s4.camera",
                      "s4.screen"]),
        # Its tiles' video (camera and screen), the stage, and the voices it listens to
        # or whose hand is raised, nothing else.
        (CENTER, {"center": view("s4")}, [*STAGE, "s3.microphone", "s4.camera", "s4.screen"]),
        (CENTER, {"center": view("", "s1")}, ["s1.microphone", *STAGE, "s3.microphone"]),
        (CENTER, {"center": view("s2 s1", "s2")}, ["s1.camera", *STAGE, "s3.microphone"]),
        # Another moderator's view is its own.
        (CENTER, {"other": view("s1 s3 s4", "s1")}, ["s1.camera", *STAGE, "s3.camera",
                                                     "s3.microphone", "s4.camera", "s4.screen"]),
    ],
    ids=[
        "station receives the stage",
        "on stage not itself",
        "station unaffected by views and hands",
        "no grant",
        "console default page",
        "console tiles",
        "console listens",
        "console tile on stage",
        "views are per moderator",
    ],
)  # fmt: skip
def test_receives(who: policy.Member, views: dict[str, policy.View], expected: list[str]) -> None:
    by_sid = {ParticipantID(k): v for k, v in views.items()}
    assert policy.receives(ROOM, by_sid)[who.sid] == expected


def test_the_default_page_is_the_first_25_off_stage() -> None:
    sites = [member(f"s{i:03}", "camera") for i in range(40)]
    chosen = policy.receives([CENTER, S2, *sites], {})[CENTER.sid]
    assert chosen == [*STAGE, *(f"s{i:03}.camera" for i in range(policy.DEFAULT_TILES))]


U = policy.Uplink


@pytest.mark.parametrize(
    ("room", "views", "expected"),
    [
        # No console: every camera off stage paused, every microphone too.
        ([S2, S1, S3], {}, {"s2": U("stage"), "s1": U("paused", "paused"),
                            "s3": U("paused", "paused")}),
        # A console on its default page: the first 25 send thumbnails; only a raised
        # hand is heard.
        ([CENTER, S2, S1, S3], {}, {"center": U("stage"), "s2": U("stage"),
                                    "s1": U("thumbnail", "paused"), "s3": U("thumbnail", "on")}),
        # A page elsewhere pauses them; listening resumes a microphone.
        ([CENTER, S1, S3, S4], {"center": view("s4", "s1")},
         {"center": U("stage"), "s1": U("paused", "on"), "s3": U("paused", "on"),
          "s4": U("thumbnail", "paused")}),
        # Two consoles: what either shows or hears.
        ([CENTER, member("c2", moderator=True), S1, S4],
         {"center": view("s4"), "c2": view("s1", "s4")},
         {"center": U("stage"), "c2": U("paused", "paused"), "s1": U("thumbnail", "paused"),
          "s4": U("thumbnail", "on")}),
    ],
    ids=["nobody watches", "default page", "page and listen", "two consoles"],
)  # fmt: skip
def test_uplinks(
    room: list[policy.Member], views: dict[str, policy.View], expected: dict[str, policy.Uplink]
) -> None:
    by_sid = {ParticipantID(k): v for k, v in views.items()}
    assert policy.uplinks(room, by_sid) == expected


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


A, B, C = PublicationID("a"), PublicationID("b"), PublicationID("c")
HOLD = policy.FLOOR_HOLD


@pytest.mark.parametrize(
    ("floor", "voices", "speaking", "now", "expected"),
    [
        # Nobody has it yet: the lecturer's voice (the first), even while silent.
        (policy.Floor(), [A, B], {}, 0.0, policy.Floor(A)),
        (policy.Floor(), [A, B], {B: 20}, 0.0, policy.Floor(A, B, 0.0)),
        # Another voice must stay the loudest for FLOOR_HOLD seconds to take it.
        (policy.Floor(A, B, 0.0), [A, B], {B: 20}, HOLD / 2, policy.Floor(A, B, 0.0)),
        (policy.Floor(A, B, 0.0), [A, B], {A: 40, B: 20}, HOLD, policy.Floor(B)),
        # The holder speaking up again (or silence) resets the challenge.
        (policy.Floor(A, B, 0.0), [A, B], {A: 10, B: 20}, HOLD, policy.Floor(A)),
        (policy.Floor(A, B, 0.0), [A, B], {}, HOLD, policy.Floor(A)),
        # A third voice louder than the challenger starts its own challenge.
        (policy.Floor(A, B, 0.0), [A, B, C], {B: 30, C: 20}, HOLD, policy.Floor(A, C, HOLD)),
        # Off stage, a voice is not a challenger; a holder sent back loses the floor.
        (policy.Floor(A), [A], {C: 0}, 5.0, policy.Floor(A)),
        (policy.Floor(B), [A], {}, 5.0, policy.Floor(A)),
        (policy.Floor(A), [], {}, 5.0, policy.Floor()),
    ],
)  # fmt: skip
def test_the_floor_passes_to_a_voice_that_keeps_speaking(
    floor: policy.Floor,
    voices: list[PublicationID],
    speaking: dict[PublicationID, int],
    now: float,
    expected: policy.Floor,
) -> None:
    assert policy.next_floor(floor, voices, speaking, now) == expected


@pytest.mark.parametrize(
    ("voices", "tracks", "holder", "expected"),
    [
        ([A, B], 1, A, [A]),
        ([A, B], 1, B, [B]),
        # Enough tracks: every voice in stage order, whoever holds the floor.
        ([A, B], 2, B, [A, B]),
        ([A, B, C], 2, C, [C, A]),
        ([A, B], 1, None, [A]),
        ([], 1, None, []),
    ],
)
def test_voices_heard(
    voices: list[PublicationID], tracks: int, holder: PublicationID | None, expected: list[str]
) -> None:
    assert policy.voices_heard(voices, tracks, holder) == expected


THREE = (150_000.0, 500_000.0, 1_500_000.0)


@pytest.mark.parametrize(
    ("rates", "current", "shows", "cap", "estimate", "try_up", "expected"),
    [
        # what it shows: the stage the top, a tile the lowest
        (THREE, 0, "stage", "auto", None, False, 2),
        (THREE, 2, "tile", "auto", None, False, 0),
        # the subscriber's own cap
        (THREE, 2, "stage", "low", None, False, 0),
        (THREE, 2, "stage", "mid", None, False, 1),
        (THREE, 0, "stage", "high", None, False, 2),
        (THREE, 2, "tile", "high", None, False, 0),  # a cap never raises a tile
        # its link: down at once to what fits, up only with a margin to spare
        (THREE, 2, "stage", "auto", 1_400_000, False, 1),
        (THREE, 2, "stage", "auto", 400_000, False, 0),
        (THREE, 2, "stage", "auto", 1_500_000, False, 2),  # just fits what it gets
        (THREE, 1, "stage", "auto", 1_600_000, False, 1),  # not enough to spare
        (THREE, 1, "stage", "auto", 1_900_000, False, 2),
        (THREE, 0, "stage", "auto", 700_000, False, 1),
        (THREE, 1, "stage", "auto", 100_000, False, 0),  # nothing fits: the lowest
        (THREE, 1, "stage", "low", 5_000_000, False, 0),
        # a link that carried its layer a while tries the next one up, one at a time
        (THREE, 0, "stage", "auto", 200_000, True, 1),
        (THREE, 1, "stage", "auto", 600_000, True, 2),
        (THREE, 1, "stage", "mid", 600_000, True, 1),  # never over the cap
        (THREE, 2, "stage", "auto", 600_000, True, 1),  # a shortfall still moves down
        # layers not arriving (paused by the sender, or not seen yet)
        ((150_000.0, 500_000.0, None), 1, "stage", "auto", None, False, 1),
        ((150_000.0, None, 1_500_000.0), 0, "stage", "auto", 200_000, True, 2),
        ((None, 500_000.0, 1_500_000.0), 2, "tile", "auto", None, False, 1),
        ((None, None, None), 2, "stage", "low", None, False, 0),  # nothing measured yet
        ((None, None, None), 0, "stage", "auto", None, False, 2),
        # one layer (a track sent once) is always itself
        ((800_000.0,), 0, "tile", "low", 10_000, True, 0),
    ],
)
def test_layer_for(
    rates: tuple[float | None, ...],
    current: int,
    shows: policy.Shows,
    cap: policy.LayerCap,
    estimate: float | None,
    try_up: bool,
    expected: int,
) -> None:
    assert policy.layer_for(rates, current, shows, cap, estimate, try_up) == expected


@pytest.mark.parametrize(
    ("rates", "current", "estimate", "try_up", "loss", "expected"),
    [
        # loss the link's estimate does not show (random loss on a village link)
        (THREE, 2, 5_000_000, False, 0.15, 1),  # over 10 %: one layer down
        (THREE, 1, 5_000_000, False, 0.15, 0),
        (THREE, 0, 5_000_000, True, 0.15, 0),  # the lowest stays
        (THREE, 1, 5_000_000, True, 0.05, 2),  # under 10 %: as without
        (THREE, 2, 600_000, False, 0.05, 1),  # the estimate still moves it down
        (THREE, 1, 1_900_000, False, 0.01, 2),
        (THREE, 0, 200_000, True, 0.0, 1),
        ((None, 500_000.0, 1_500_000.0), 2, None, False, 0.2, 1),
        ((None, 500_000.0, 1_500_000.0), 1, None, False, 0.2, 1),  # lowest arriving
        ((150_000.0, None, 1_500_000.0), 2, None, False, 0.2, 0),  # skips a paused one
    ],
)
def test_layer_for_follows_loss(
    rates: tuple[float | None, ...],
    current: int,
    estimate: float | None,
    try_up: bool,
    loss: float,
    expected: int,
) -> None:
    chosen = policy.layer_for(rates, current, "stage", "auto", estimate, try_up, loss)
    assert chosen == expected
