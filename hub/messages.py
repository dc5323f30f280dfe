"""Every signaling message, both ways, as a type (the protocol: PROTOCOL.md).

Incoming messages are validated into these models before a handler sees them;
outgoing ones are built as these models, and only the socket turns them into JSON.
tests/test_messages.py checks every JSON example of PROTOCOL.md against them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
)

from hub.policy import LayerCap, MicrophoneLevel, QualityLevel
from hub.tokens import Source

MAX_SDP_BYTES = 64 * 1024

# --- client → hub -------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Join(_Message):
    type: Literal["join"]
    token: Annotated[StrictStr, Field(max_length=4096)]
    room: Annotated[StrictStr, Field(max_length=64)] | None = None


class Offer(_Message):
    type: Literal["offer"]
    pc: Literal["publisher"]
    sdp: Annotated[StrictStr, Field(max_length=MAX_SDP_BYTES)]
    sources: dict[StrictStr, Source] = Field(default_factory=dict)


class Answer(_Message):
    type: Literal["answer"]
    pc: Literal["subscriber"]
    sdp: Annotated[StrictStr, Field(max_length=MAX_SDP_BYTES)]


class RestartIce(_Message):
    """The subscriber connection's path changed: the hub offers new ICE credentials."""

    type: Literal["restart_ice"]


class CandidateBody(_Message):
    candidate: Annotated[StrictStr, Field(max_length=1024)]
    sdpMid: StrictStr | None = None
    sdpMLineIndex: StrictInt | None = None


class Candidate(_Message):
    type: Literal["candidate"]
    pc: Literal["publisher", "subscriber"]
    candidate: CandidateBody | None = None


class Unpublish(_Message):
    type: Literal["unpublish"]
    source: Source


class Mute(_Message):
    type: Literal["mute"]
    source: Source
    muted: StrictBool


class Hand(_Message):
    type: Literal["hand"]
    raised: StrictBool


class AudioOnly(_Message):
    type: Literal["audio_only"]
    on: StrictBool


class VideoCap(_Message):
    type: Literal["video_cap"]
    cap: LayerCap


class Chat(_Message):
    type: Literal["chat"]
    text: Annotated[StrictStr, Field(min_length=1, max_length=2000)]


class Moderate(_Message):
    type: Literal["moderate"]
    action: Literal["mute", "stage", "hand", "remove", "readmit"]
    participant: Annotated[StrictStr, Field(max_length=64)] | None = None
    """The sid acted on; ``readmit`` names an ``identity`` instead (it is not here)."""
    identity: Annotated[StrictStr, Field(max_length=64)] | None = None
    source: Source | None = None
    muted: StrictBool | None = None
    on_stage: StrictBool | None = None
    raised: StrictBool | None = None


class RollCallMessage(_Message):
    type: Literal["rollcall"]
    action: Literal["start", "stop"]
    seconds: Annotated[StrictInt, Field(ge=5, le=600)] = 30
    expected: Annotated[
        list[Annotated[StrictStr, Field(max_length=64)]], Field(max_length=1000)
    ] = []


class RollCallAck(_Message):
    type: Literal["rollcall_ack"]
    id: Annotated[StrictStr, Field(max_length=64)]


class View(_Message):
    type: Literal["view"]
    tiles: Annotated[list[Annotated[StrictStr, Field(max_length=64)]], Field(max_length=1000)]
    listen: Annotated[list[Annotated[StrictStr, Field(max_length=64)]], Field(max_length=1000)] = []
    """At most ``HUB_VIEW_MAX_TILES`` sids each (checked by the handler: a setting)."""


class Ping(_Message):
    type: Literal["ping"]
    id: StrictInt | StrictStr | None = None


class Leave(_Message):
    type: Literal["leave"]


INCOMING: dict[str, type[_Message]] = {
    "join": Join,
    "offer": Offer,
    "answer": Answer,
    "restart_ice": RestartIce,
    "candidate": Candidate,
    "unpublish": Unpublish,
    "mute": Mute,
    "hand": Hand,
    "audio_only": AudioOnly,
    "video_cap": VideoCap,
    "chat": Chat,
    "moderate": Moderate,
    "ping": Ping,
    "leave": Leave,
    "rollcall": RollCallMessage,
    "rollcall_ack": RollCallAck,
    "view": View,
}


# --- hub → client -------------------------------------------------------------------


class Outgoing(BaseModel):
    """A message the hub sends (each has its own type below)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _json: str | None = PrivateAttr(default=None)

    def to_json(self) -> str:
        # Made once: a message broadcast to a room is written to every member's socket.
        if self._json is None:
            self._json = self.model_dump_json(by_alias=True)
        return self._json


class PublicationInfo(Outgoing):
    publication: str
    source: Literal["camera", "microphone", "screen"]
    kind: Literal["audio", "video"]
    codec: str
    muted: bool
    muted_by_moderator: bool
    stalled: bool
    """On stage, it was flowing and nothing has arrived for a few seconds (the
    console shows 主讲人连接中断); it clears when media flows again."""


class ParticipantInfo(Outgoing):
    sid: str
    identity: str
    name: str
    role: str
    hand_raised: bool
    on_stage: bool
    can_moderate: bool
    can_chat: bool
    publications: list[PublicationInfo]


class TrackRef(Outgoing):
    """What one m-line of the subscriber connection carries."""

    publication: str
    participant: str
    source: Literal["camera", "microphone", "screen"]


class RestreamInfo(Outgoing):
    target_id: str
    url: str
    state: str
    error: str | None
    attempts: int
    since: float


class MediaInfo(Outgoing):
    """The room's media as everyone may know it."""

    recording: bool
    recording_started_at: float | None
    live: bool
    hls_url: str | None


class ModeratorMediaInfo(MediaInfo):
    """... and as moderators know it."""

    restreams: list[RestreamInfo]
    errors: dict[str, str]


class MediaStatus(MediaInfo):
    type: Literal["media"] = "media"


class ModeratorMediaStatus(ModeratorMediaInfo):
    type: Literal["media"] = "media"


class Joined(Outgoing):
    type: Literal["joined"] = "joined"
    room: str
    participant: ParticipantInfo
    participants: list[ParticipantInfo]
    stage: list[str]
    ice_servers: list[dict[str, str | list[str]]]
    """As RTCIceServer takes them: absent fields left out, never null."""
    quality: QualityLevel
    microphone: MicrophoneLevel = "on"
    media: ModeratorMediaInfo | MediaInfo
    """As the ``media`` message gives it (without its ``type``)."""


class PublisherAnswer(Outgoing):
    type: Literal["answer"] = "answer"
    pc: Literal["publisher"] = "publisher"
    sdp: str


class SubscriberOffer(Outgoing):
    type: Literal["offer"] = "offer"
    pc: Literal["subscriber"] = "subscriber"
    sdp: str
    tracks: dict[str, TrackRef]


class Tracks(Outgoing):
    """The subscriber connection's m-lines re-pointed without an offer."""

    type: Literal["tracks"] = "tracks"
    tracks: dict[str, TrackRef]


class ParticipantJoined(Outgoing):
    type: Literal["participant_joined"] = "participant_joined"
    participant: ParticipantInfo


class ParticipantUpdated(Outgoing):
    type: Literal["participant_updated"] = "participant_updated"
    participant: ParticipantInfo


class ParticipantLeft(Outgoing):
    type: Literal["participant_left"] = "participant_left"
    sid: str


class Stage(Outgoing):
    type: Literal["stage"] = "stage"
    stage: list[str]


class ChatOut(Outgoing):
    type: Literal["chat"] = "chat"
    from_: str = Field(validation_alias="from", serialization_alias="from")
    name: str
    text: str
    at: float


class Quality(Outgoing):
    type: Literal["quality"] = "quality"
    level: QualityLevel
    microphone: MicrophoneLevel = "on"


class Muted(Outgoing):
    type: Literal["muted"] = "muted"
    source: Literal["camera", "microphone", "screen"]
    muted: bool
    by_moderator: bool


class Removed(Outgoing):
    type: Literal["removed"] = "removed"
    reason: Literal["removed_by_moderator", "duplicate_identity", "room_closed"]


class Pong(Outgoing):
    type: Literal["pong"] = "pong"
    id: int | str | None


class Speakers(Outgoing):
    type: Literal["speakers"] = "speakers"
    speakers: list[str]


class LinkInfo(Outgoing):
    rtt_ms: float | None
    loss: float | None
    bitrate_kbps: float
    uplink: QualityLevel


class Stats(Outgoing):
    type: Literal["stats"] = "stats"
    participants: dict[str, LinkInfo]


class RemovedIdentity(Outgoing):
    identity: str
    name: str


class RemovedIdentities(Outgoing):
    type: Literal["removed_identities"] = "removed_identities"
    removed: list[RemovedIdentity]


class RollCallStarted(Outgoing):
    type: Literal["rollcall"] = "rollcall"
    id: str
    deadline: float


class RollCallEntry(Outgoing):
    status: Literal["waiting", "present", "late", "absent"]
    at: float | None


class RollCallStatus(Outgoing):
    type: Literal["rollcall_status"] = "rollcall_status"
    id: str
    started_at: float
    deadline: float
    closed: bool
    entries: dict[str, RollCallEntry]
    counts: dict[str, int]
    names: dict[str, str] = {}


class Redirect(Outgoing):
    """The room is held by another node of the cluster: join there (then closed)."""

    type: Literal["redirect"] = "redirect"
    url: str
    node: str


class Error(Outgoing):
    type: Literal["error"] = "error"
    code: str
    message: str
    ref: str | None = None


OUTGOING: tuple[type[Outgoing], ...] = (  # every message the hub sends
    Joined,
    PublisherAnswer,
    SubscriberOffer,
    Tracks,
    ParticipantJoined,
    ParticipantUpdated,
    ParticipantLeft,
    Stage,
    ChatOut,
    Quality,
    Muted,
    Removed,
    Pong,
    Speakers,
    Stats,
    MediaStatus,
    ModeratorMediaStatus,
    RemovedIdentities,
    RollCallStarted,
    RollCallStatus,
    Redirect,
    Error,
)
