"""Who receives what: pure functions over a snapshot of the room.

No aiortc, no asyncio: the room describes itself as :class:`Member` values (and the
consoles' :class:`View`) and applies what these functions decide, so the rules are
tested as tables (tests/test_policy.py). See "Who receives what" in PROTOCOL.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import media.program
from hub.ids import ParticipantID, PublicationID
from media.frames import Kind, Source
from media.program import Program

DEFAULT_TILES = 25
"""Tiles of a moderator that has not said what it shows (a console's first page)."""

QualityLevel = Literal["stage", "thumbnail", "paused"]
MicrophoneLevel = Literal["on", "paused"]


@dataclass(frozen=True, slots=True)
class Pub:
    """A publication as the policy sees it."""

    id: PublicationID
    source: Source
    kind: Kind
    order: int = 0
    """When it started among the room's publications (earlier is smaller)."""


@dataclass(frozen=True, slots=True)
class Member:
    """A participant as the policy sees it."""

    sid: ParticipantID
    publications: tuple[Pub, ...] = ()
    can_subscribe: bool = True
    can_moderate: bool = False
    on_stage: bool = False
    hand_raised: bool = False


@dataclass(frozen=True, slots=True)
class View:
    """What a moderator's console shows (its ``view`` message)."""

    tiles: frozenset[ParticipantID] = frozenset()
    listen: frozenset[ParticipantID] = frozenset()


def view_of(member: Member, members: Sequence[Member], views: Mapping[ParticipantID, View]) -> View:
    """The view a moderator sent, else its first page: the first
    :data:`DEFAULT_TILES` participants off stage, in the order they joined."""
    sent = views.get(member.sid)
    if sent is not None:
        return sent
    off_stage = (m.sid for m in members if not m.on_stage and m.sid != member.sid)
    return View(frozenset(itertools.islice(off_stage, DEFAULT_TILES)))


def receives(
    members: Sequence[Member], views: Mapping[ParticipantID, View]
) -> dict[ParticipantID, list[PublicationID]]:
    """What each member receives: everything of the stage (but its own); a moderator
    also the video of the tiles it shows, and the voices of those it listens to or
    whose hand is raised. Nothing else."""
    stage = [(m.sid, p.id) for m in members if m.on_stage for p in m.publications]
    received: dict[ParticipantID, list[PublicationID]] = {}
    for member in members:
        if not member.can_subscribe:
            received[member.sid] = []
        elif not member.can_moderate:
            received[member.sid] = [pub for sid, pub in stage if sid != member.sid]
        else:
            view = view_of(member, members, views)
            received[member.sid] = [
                publication.id
                for sender in members
                if sender.sid != member.sid
                for publication in sender.publications
                if sender.on_stage or _shows(view, sender, publication)
            ]
    return received


def _shows(view: View, sender: Member, publication: Pub) -> bool:
    if publication.kind == "video":
        return sender.sid in view.tiles
    return sender.sid in view.listen or sender.hand_raised


@dataclass(frozen=True, slots=True)
class Uplink:
    """How a participant should send (its ``quality`` message)."""

    level: QualityLevel
    microphone: MicrophoneLevel = "on"


def uplinks(
    members: Sequence[Member], views: Mapping[ParticipantID, View]
) -> dict[ParticipantID, Uplink]:
    """How each participant sends: the stage at full quality; off stage, a camera at
    thumbnail quality while a moderator shows its tile and paused while none does, a
    microphone paused while no moderator hears it (the rules of :func:`receives`;
    sinks take only the stage)."""
    consoles = [view_of(m, members, views) for m in members if m.can_moderate and m.can_subscribe]
    tiled: set[ParticipantID] = set().union(*(v.tiles for v in consoles))
    listened: set[ParticipantID] = set().union(*(v.listen for v in consoles))
    result: dict[ParticipantID, Uplink] = {}
    for member in members:
        if member.on_stage:
            result[member.sid] = Uplink("stage")
            continue
        heard = bool(consoles) and (member.sid in listened or member.hand_raised)
        result[member.sid] = Uplink(
            "thumbnail" if member.sid in tiled else "paused", "on" if heard else "paused"
        )
    return result


LayerCap = Literal["low", "mid", "high", "auto"]
"""A subscriber's own cap on the layers it receives (流畅 / 标清 / 高清 / 自动)."""
Shows = Literal["stage", "tile"]
"""How big a subscriber shows a video: the stage's picture, or a tile of a wall."""

UP_MARGIN = 1.25
"""A higher layer is taken on the estimate only when it carries it with this to spare."""
LOSS_DOWN = 0.10
"""A subscriber losing more than this of a video's packets gets the next layer down
(libwebrtc's loss-based controller backs off above 10 %): a smaller frame is fewer
packets, so fewer frames lose one, and repairs cost its link less."""
_CAP_INDEX = {"low": 0, "mid": 1}


def shows(sender: Member) -> Shows:
    """How a subscriber shows a sender's video: the stage's as the big picture,
    anyone else's as a tile of a console's wall (the only other way it is received)."""
    return "stage" if sender.on_stage else "tile"


def layer_for(
    rates: Sequence[float | None],
    current: int,
    shows: Shows,
    cap: LayerCap,
    estimate_bps: float | None,
    try_up: bool = False,
    loss: float | None = None,
) -> int:
    """Which simulcast layer (an index of ``rates``, lowest first) a subscription
    sends. ``rates`` are the layers' measured bits/s, None for one not arriving
    (paused by its sender, or not yet seen); ``current`` the layer it sends now;
    ``estimate_bps`` what the subscriber's own estimate (REMB) leaves for this video.

    The highest arriving layer within what it shows (a tile: the lowest) and its cap,
    that its link carries: the current layer and those below at their rate (down at
    once), a higher one with :data:`UP_MARGIN` to spare. A receiver's estimate grows
    only with what it receives (libwebrtc's: at most 1.5 times), so it rarely shows
    room for a layer three times the size: with ``try_up`` (the link carried the
    current layer for a while) the next layer up is tried all the same. No arriving
    layer fits: the lowest arriving one (its video may still yield); none known to
    arrive (nothing measured yet): the highest within what it shows and its cap.
    ``loss``, the fraction of this video its subscriber's link lost lately (its
    reports or its NACKs, see :meth:`hub.peers.Slot._loss`), bounds that: over
    :data:`LOSS_DOWN`, one layer down from the current (tries up go on: on a link
    that stayed lossy, the next look brings it down again).
    Recording, live HLS and restream do not ask: they take the top while it flows
    (:class:`hub.forwarding.SinkSwitch`)."""
    top = len(rates) - 1
    limit = top if shows == "stage" else 0
    limit = min(limit, _CAP_INDEX.get(cap, top))
    arriving = [i for i, rate in enumerate(rates) if rate is not None and i <= limit]
    if not arriving:
        lowest = next((i for i, rate in enumerate(rates) if rate is not None), None)
        return limit if lowest is None else lowest
    if estimate_bps is None:
        chosen = arriving[-1]
    else:
        fitting = [
            i
            for i in arriving
            if (rates[i] or 0.0) * (UP_MARGIN if i > current else 1.0) <= estimate_bps
        ]
        chosen = fitting[-1] if fitting else arriving[0]
        if try_up and chosen == current:
            chosen = next((i for i in arriving if i > current), current)
    if loss is not None and loss > LOSS_DOWN:
        below = [i for i in arriving if i < current]
        chosen = min(chosen, below[-1] if below else arriving[0])
    return chosen


@dataclass(frozen=True, slots=True)
class _Track:
    track_id: str
    participant: str
    source: Source
    kind: Kind


def program(stage: Sequence[Member]) -> Program:
    """The program of the stage (``stage`` in stage order): the one rule of
    :mod:`media.program`, which live HLS, restream and the library follow too."""
    tracks = sorted(
        ((p.order, _Track(p.id, m.sid, p.source, p.kind)) for m in stage for p in m.publications),
        key=lambda pair: pair[0],
    )
    return media.program.program([t for _, t in tracks], [m.sid for m in stage])


FLOOR_HOLD = 1.0
"""Seconds a stage voice must stay the loudest before it takes the floor: a word of
assent or a cough from another does not move a one-track viewer's sound."""


@dataclass(frozen=True, slots=True)
class Floor:
    """The stage voice a viewer with fewer audio tracks than stage voices hears first:
    the current speaker, switched with hysteresis (:func:`next_floor`)."""

    holder: PublicationID | None = None
    challenger: PublicationID | None = None
    """The loudest voice other than the holder, speaking since ``since``."""
    since: float = 0.0


def next_floor(
    floor: Floor, voices: Sequence[PublicationID], speaking: Mapping[PublicationID, int], now: float
) -> Floor:
    """The floor after one look at who speaks: ``voices`` are the program's (stage
    order), ``speaking`` the audio level (0 loudest … 127 silent) of those speaking.
    The floor starts with the lecturer's voice (the first) and passes to another
    once that one has been the loudest for :data:`FLOOR_HOLD` seconds; silence keeps
    it where it is."""
    holder = floor.holder if floor.holder in voices else next(iter(voices), None)
    talking = [v for v in voices if v in speaking]
    loudest = min(talking, key=lambda v: speaking[v], default=None)
    if loudest is None or loudest == holder:
        return Floor(holder)
    if loudest != floor.challenger:
        return Floor(holder, loudest, now)
    if now - floor.since >= FLOOR_HOLD:
        return Floor(loudest)
    return Floor(holder, loudest, floor.since)


def voices_heard(
    voices: Sequence[PublicationID], tracks: int, holder: PublicationID | None
) -> list[PublicationID]:
    """The voices a viewer with ``tracks`` audio tracks hears, in its tracks' order:
    every voice in stage order when they fit, else the floor's holder first."""
    if len(voices) > tracks and holder is not None and holder in voices:
        voices = [holder, *(v for v in voices if v != holder)]
    return list(voices[:tracks])
