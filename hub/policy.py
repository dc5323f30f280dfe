"""Who receives what: pure functions over a snapshot of the room.

No aiortc, no asyncio: the room describes itself as :class:`Member` values and
applies what these functions decide, so the rules are tested as tables
(tests/test_policy.py). See "Who receives what" in PROTOCOL.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import media.program
from hub.ids import ParticipantID, PublicationID
from media.frames import Kind, Source
from media.program import Program


@dataclass(frozen=True, slots=True)
class Pub:
    """A publication as the policy sees it."""

    id: PublicationID
    source: Source
    kind: Kind
    order: int = 0
    """When it appeared among the room's appearances (earlier is smaller)."""


@dataclass(frozen=True, slots=True)
class Member:
    """A participant as the policy sees it."""

    sid: ParticipantID
    publications: tuple[Pub, ...] = ()
    can_subscribe: bool = True
    can_moderate: bool = False
    on_stage: bool = False


def receives(member: Member, members: Sequence[Member]) -> list[PublicationID]:
    """What ``member`` receives: the stage, or everything for a moderator."""
    if not member.can_subscribe:
        return []
    return [
        publication.id
        for sender in members
        if sender.sid != member.sid and (member.can_moderate or sender.on_stage)
        for publication in sender.publications
    ]


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
