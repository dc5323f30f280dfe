"""What a room must not forget: a small serialisable value, keyed by identity.

Written to the Store whenever it changes (and refreshed with the node's heartbeat), so a
hub that restarts (and, later, a node that survives another) rebuilds the room from it:
who is on stage and in which order, raised hands, moderators' mutes, whether households
may watch and the room is live, the recording in progress (its parts so far), the
restream targets and the identities a moderator removed. Nothing here holds aiortc
state, nor a sid or a ``time.monotonic()`` stamp: they mean nothing in another process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hub.ids import NodeID, ParticipantIdentity, RoomName

STATE_KEY = "room-state:"
"""The Store key of a room's state is this prefix and the room's name."""


def state_key(room: RoomName) -> str:
    return f"{STATE_KEY}{room}"


@dataclass
class RoomState:
    stage: list[ParticipantIdentity] = field(default_factory=list)
    """Who is on stage, in the order they came: a site that drops out and comes back
    takes its place again."""
    hands: dict[ParticipantIdentity, float] = field(default_factory=dict)
    """Raised hands: identity → when (``time.time()``)."""
    mutes: dict[ParticipantIdentity, list[str]] = field(default_factory=dict)
    """Sources a moderator muted, by identity: kept across republishing and rejoining."""
    public: bool = False
    """Households may watch without an account (WHEP, live HLS)."""
    live: bool = False
    """Live HLS for households is on."""
    recording: list[str] | None = None
    """The directories of the recording in progress, one per part (a restart starts a
    new part); None when the room is not recorded."""
    restreams: list[str] = field(default_factory=list)
    """The RTMP targets, in full: the Store is the hub's own, never shown to anyone."""
    removed: dict[ParticipantIdentity, str] = field(default_factory=dict)
    """Identities a moderator removed, with their names: kept out until readmitted."""
    audience: dict[ParticipantIdentity, str] = field(default_factory=dict)
    """The sites expected here (a session's audience but its host), with their names."""

    def to_json(self, node: NodeID) -> dict[str, Any]:
        return {"node": node, **asdict(self)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RoomState:
        """The state a document holds; fields it lacks keep their defaults, unknown
        ones are ignored (a document written by another version of the hub)."""
        known = {name: doc[name] for name in cls.__dataclass_fields__ if name in doc}
        state = cls(**known)
        state.stage = [ParticipantIdentity(i) for i in state.stage]
        return state
