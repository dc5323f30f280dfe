"""Who receives what: pure functions over a snapshot of the room.

No aiortc, no asyncio: the room describes itself as :class:`Member` values and
applies what these functions decide, so the rules are tested as tables
(tests/test_policy.py). See "Who receives what" in PROTOCOL.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hub.ids import ParticipantID, PublicationID
from media.frames import Kind, Source


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
    stage_since: int | None = None
    """When it appeared on stage (an appearance stamp), None while off stage."""

    @property
    def on_stage(self) -> bool:
        return self.stage_since is not None


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
class Program:
    """The stage as one picture and its voices."""

    video: PublicationID | None
    audio: tuple[PublicationID, ...]


def program(stage: Sequence[Member]) -> Program:
    """The latest to appear wins the picture (a shared screen, or a site called on
    stage); every microphone on stage is heard."""
    best: tuple[int, PublicationID] | None = None
    microphones: list[PublicationID] = []
    for member in stage:
        since = member.stage_since or 0
        for publication in member.publications:
            if publication.kind == "audio":
                microphones.append(publication.id)
                continue
            stamp = since if publication.source == "camera" else max(since, publication.order)
            if best is None or stamp > best[0]:
                best = (stamp, publication.id)
    return Program(best[1] if best else None, tuple(microphones[::-1]))
