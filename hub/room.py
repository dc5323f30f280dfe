"""Rooms, participants and publications: who is in a room, who is on stage, who
receives what. Media itself goes through :mod:`hub.forwarding`.

Ownership follows mediasoup: a room creates its participants, a participant its
publications and peers; ``close()`` is idempotent and cascades down.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiortc import RTCIceServer, RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcsessiondescription import RTCSessionDescription

from hub.aiortc_internals import ReceiverTap, SenderHook, report_downstream_loss
from hub.forwarding import (
    CodecInfo,
    DownTrack,
    ForwardingStats,
    Subscription,
    UpTrack,
    downstream_loss,
)
from hub.ids import ParticipantID, ParticipantIdentity, PublicationID, RoomName
from hub.limits import RoomLimits
from hub.peers import (
    OfferedMedia,
    ParkedTrack,
    announce,
    close_peer,
    codec_info,
    make_peer_connection,
    parse_candidate,
    parse_sdp,
    preferences_for,
    send_parameters,
)
from hub.rollcall import RollCall
from hub.room_media import MediaDirs, Recorded, RoomMedia
from hub.room_state import RoomState
from hub.tasks import TaskOwner
from hub.tokens import Grant, Role, Source
from media.frames import EncodedFrame, FrameSink, TrackInfo

logger = logging.getLogger(__name__)

SOURCE_KIND = {Source.CAMERA: "video", Source.SCREEN: "video", Source.MICROPHONE: "audio"}
VIDEO_CEILING_BPS = 2_500_000
"""The bandwidth the hub announces to video publishers (REMB): a stage camera's
1.5 Mbps or a screen share fits under it."""
SPEAKING_LEVEL = 60
"""Audio level (0 loudest … 127 silent, dBov) under which a publisher is speaking."""

ParticipantKind = Literal["ws", "whip", "whep"]


class HubError(Exception):
    """A refusal with a code from the signaling protocol and a reason for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class LinkStats:
    """A participant's link as the hub sees it."""

    rtt_ms: float | None = None
    loss: float | None = None
    bitrate_kbps: float = 0.0

    def as_dict(self) -> dict[str, float | None]:
        return {"rtt_ms": self.rtt_ms, "loss": self.loss, "bitrate_kbps": self.bitrate_kbps}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(8)}"


class Publication:
    """A track a participant sends, and the up track that fans it out."""

    def __init__(
        self, participant: Participant, source: Source, up: UpTrack, tap: ReceiverTap
    ) -> None:
        self.id = PublicationID(_new_id("PUB"))
        self.participant = participant
        self.source = source
        self.up = up
        self.tap = tap
        self.order = next(participant.room.order)
        """When it appeared, among the room's appearances (the program's picture rule)."""
        self.closed = False

    @property
    def kind(self) -> str:
        return self.up.kind

    @property
    def muted(self) -> bool:
        return self.up.muted

    def info(self) -> dict[str, Any]:
        return {
            "publication": self.id,
            "source": self.source.value,
            "kind": self.kind,
            "codec": self.up.codec.name,
            "muted": self.muted,
            "muted_by_moderator": self.source.value in self.participant.moderator_mutes,
        }

    def track_info(self) -> TrackInfo:
        return TrackInfo(
            track_id=self.id,
            kind="video" if self.kind == "video" else "audio",
            codec=self.up.codec.name,  # type: ignore[arg-type]
            source=self.source.value,
            participant=self.participant.identity,
            label=self.participant.name,
        )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.tap.set_frame_callback(None)
        self.up.close()


class _Slot:
    """One sending transceiver of a subscriber connection and what it carries."""

    def __init__(self, transceiver: RTCRtpTransceiver, hook: SenderHook, down: DownTrack) -> None:
        self.transceiver = transceiver
        self.hook = hook
        self.down = down
        self.publication: Publication | None = None
        self.subscription: Subscription | None = None

    def bind(self, publication: Publication) -> None:
        self.unbind()
        self.publication = publication
        self.subscription = Subscription(publication.up, self.down)

    def configure(self, publication: Publication) -> bool:
        """Set the payload types for ``publication``'s codec; False if not negotiated."""
        params = send_parameters(self.transceiver, publication.up.codec)
        if params is None:
            return False
        self.down.configure(
            self.hook.writer().srtp_socket,
            params.payload_type,
            params.rtx_payload_type,
            params.abs_send_time_id,
        )
        return True

    def unbind(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
        self.subscription = None
        self.publication = None


class _SendingPeer:
    """A peer connection the hub sends media on, slot by slot."""

    def __init__(self, pc: RTCPeerConnection, stats: ForwardingStats) -> None:
        self.pc = pc
        self.stats = stats
        self.slots: list[_Slot] = []
        self.video_held = False
        """Audio-only mode: no video is sent on this connection."""

    def add_slot(self, kind: str) -> _Slot:
        transceiver = self.pc.addTransceiver(ParkedTrack(kind), direction="sendonly")
        down: DownTrack
        hook = SenderHook(
            transceiver.sender,
            retransmit=lambda seq: down.on_nack(seq),
            keyframe=lambda: down.on_pli(),
            report=lambda: down.report,
            feedback=lambda rtt, estimate, lost: down.on_feedback(rtt, estimate, lost),
        )
        down = DownTrack(kind, hook.ssrc, hook.rtx_ssrc, self.stats)
        down.hold(kind == "video" and self.video_held)
        slot = _Slot(transceiver, hook, down)
        self.slots.append(slot)
        return slot

    def hold_video(self, held: bool) -> None:
        """Audio-only mode on (``held``) or off: every video slot, and any added later."""
        self.video_held = held
        for slot in self.slots:
            if slot.down.kind == "video":
                slot.down.hold(held)

    def configure_slots(self) -> None:
        """After a negotiation: write with the payload types the subscriber accepted."""
        for slot in self.slots:
            if slot.publication is not None and not slot.configure(slot.publication):
                logger.info("subscriber cannot receive %s", slot.publication.up.codec)
                slot.unbind()

    def bound(self) -> dict[PublicationID, _Slot]:
        return {s.publication.id: s for s in self.slots if s.publication is not None}

    async def close(self) -> None:
        for slot in self.slots:
            slot.unbind()
        await close_peer(self.pc)


class SubscriberPeer(_SendingPeer):
    """The connection a participant receives on; the hub offers, the client answers.

    Never two offers in flight: changes while one waits are folded into the next.
    """

    def __init__(
        self,
        pc: RTCPeerConnection,
        stats: ForwardingStats,
        send_offer: Callable[[str, dict[str, dict[str, str]]], None],
        announce_address: str | None,
    ) -> None:
        super().__init__(pc, stats)
        self._send_offer = send_offer
        self._announce = announce_address
        self._desired: list[Publication] = []
        self.negotiating = False
        self._dirty = False
        self._lock = asyncio.Lock()

    async def update(self, desired: list[Publication]) -> None:
        self._desired = desired
        async with self._lock:
            if self.negotiating:
                self._dirty = True
                return
            await self._negotiate()

    async def _negotiate(self) -> None:
        wanted = {p.id: p for p in self._desired if not p.closed}
        changed = False
        for slot in self.slots:
            if slot.publication is not None and slot.publication.id not in wanted:
                slot.unbind()
                slot.transceiver.direction = "inactive"
                changed = True
        bound = self.bound()
        for publication in wanted.values():
            if publication.id in bound:
                continue
            slot = next(
                (
                    s
                    for s in self.slots
                    if s.publication is None and s.down.kind == publication.kind
                ),
                None,
            ) or self.add_slot(publication.kind)
            slot.transceiver.setCodecPreferences(
                preferences_for(publication.kind, publication.up.codec)
            )
            slot.transceiver.direction = "sendonly"
            slot.bind(publication)
            changed = True
        if not changed:
            return
        self.negotiating = True
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        tracks = {
            str(slot.transceiver.mid): {
                "publication": slot.publication.id,
                "participant": slot.publication.participant.sid,
                "source": slot.publication.source.value,
            }
            for slot in self.slots
            if slot.publication is not None
        }
        self._send_offer(announce(self.pc.localDescription.sdp, self._announce), tracks)

    async def on_answer(self, sdp: str) -> None:
        async with self._lock:
            if not self.negotiating:
                raise HubError("bad_message", "no offer is waiting for an answer")
            parse_sdp(sdp)
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            except Exception as exc:
                raise HubError("bad_sdp", f"answer refused: {exc}") from None
            self.negotiating = False
            self.configure_slots()
            if self._dirty:
                self._dirty = False
                await self._negotiate()


class WhepPeer(_SendingPeer):
    """A WHEP viewer: it offers receive-only m-lines once, and the hub keeps them
    fed with the room's program (see :meth:`Room.program`) without renegotiating."""

    async def on_offer(self, sdp: str, room: Room) -> str:
        media = parse_sdp(sdp, room.limits.max_media)
        if any(m.direction not in ("recvonly", "inactive") for m in media):
            raise HubError("bad_sdp", "a WHEP offer receives only (a=recvonly)")
        video, _ = room.program()
        for m in media:
            slot = self.add_slot(m.kind)
            if m.kind == "video" and video is not None:
                # Only possible before setRemoteDescription (aiortc).
                slot.transceiver.setCodecPreferences(preferences_for("video", video.up.codec))
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:
            raise HubError("bad_sdp", f"offer refused: {exc}") from None
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self.follow(room.program())
        return announce(self.pc.localDescription.sdp, room.announce_address, room.gather_first)

    def follow(self, program: tuple[Publication | None, list[Publication]]) -> None:
        """Point each slot at the program: the picture, then the voices in order."""
        video, microphones = program
        voices = iter(microphones)
        for slot in self.slots:
            target = video if slot.down.kind == "video" else next(voices, None)
            if slot.publication is target:
                continue
            slot.unbind()
            if target is None:
                continue
            if slot.configure(target):
                slot.bind(target)
            # else: negotiated for another codec; a new WHEP session is needed


class PublisherPeer:
    """The connection a participant sends on; the client offers, the hub answers."""

    def __init__(self, participant: Participant, pc: RTCPeerConnection) -> None:
        self.participant = participant
        self.pc = pc
        self.by_mid: dict[str, Publication] = {}
        self._lock = asyncio.Lock()

    async def on_offer(self, sdp: str, sources: dict[str, Source]) -> str:
        async with self._lock:
            media = parse_sdp(sdp, self.participant.room.limits.max_media)
            sending = [m for m in media if m.direction in ("sendonly", "sendrecv")]
            self._check_sources(sending, sources)
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                answer = await self.pc.createAnswer()
                await self.pc.setLocalDescription(answer)
            except Exception as exc:
                await self._recover()
                raise HubError("bad_sdp", f"offer refused: {type(exc).__name__}: {exc}") from None
            self._apply(sending, sources)
            room = self.participant.room
            return announce(self.pc.localDescription.sdp, room.announce_address, room.gather_first)

    async def _recover(self) -> None:
        """aiortc may keep half of a refused offer; start afresh while that is cheap."""
        if not self.by_mid:
            broken, self.pc = self.pc, make_peer_connection(self.participant.room.ice_servers)
            await close_peer(broken)

    def _check_sources(self, sending: list[OfferedMedia], sources: dict[str, Source]) -> None:
        grant = self.participant.grant
        seen: set[Source] = set()
        for m in sending:
            source = sources.get(m.mid)
            if source is None:
                raise HubError("bad_message", f"m-line {m.mid} sends but has no source")
            if not grant.may_publish(source):
                raise HubError("forbidden", f"{grant.role.value} may not publish {source.value}")
            if SOURCE_KIND[source] != m.kind:
                raise HubError("bad_message", f"{source.value} cannot be {m.kind}")
            if source in seen:
                raise HubError("bad_message", f"two m-lines publish {source.value}")
            seen.add(source)

    def _apply(self, sending: list[OfferedMedia], sources: dict[str, Source]) -> None:
        participant = self.participant
        sending_mids = {m.mid for m in sending}
        for gone in [mid for mid in self.by_mid if mid not in sending_mids]:
            participant.unpublish(self.by_mid.pop(gone))
        for transceiver in self.pc.getTransceivers():
            mid = transceiver.mid
            if mid is None or mid not in sending_mids or mid in self.by_mid:
                continue
            codec = codec_info(transceiver)
            if codec is None:
                continue
            self.by_mid[mid] = participant.publish(sources[mid], transceiver, codec)

    def forget(self, publication: Publication) -> None:
        for mid, known in list(self.by_mid.items()):
            if known is publication:
                del self.by_mid[mid]

    async def add_candidate(
        self, candidate: str | None, mid: str | None, index: int | None
    ) -> None:
        if not candidate:
            return
        await self.pc.addIceCandidate(parse_candidate(candidate, mid, index))

    async def close(self) -> None:
        await close_peer(self.pc)


class Participant:
    """One join of one identity into a room."""

    def __init__(
        self,
        room: Room,
        grant: Grant,
        kind: ParticipantKind,
        send: Callable[[dict[str, Any]], None],
        address: str | None,
    ) -> None:
        self.sid = ParticipantID(_new_id("PA"))
        self.room = room
        self.grant = grant
        self.kind = kind
        self.send = send
        """Queues a signaling message for this participant; never blocks."""
        self.address = address
        """The client's network address, which per-address limits count by."""
        self.resource: str | None = None
        """A WHIP/WHEP session's secret (its URL's last part), once it has one."""
        self.resource_needs_token = False
        """The session was opened with a token: ending it needs one of this identity."""
        self.identity = grant.identity
        self.name: str = grant.name or grant.identity
        self.role = grant.role
        self.joined_at = time.time()
        self.publications: dict[PublicationID, Publication] = {}
        self.publisher: PublisherPeer | None = None
        self.subscriber: SubscriberPeer | None = None
        self.whep: WhepPeer | None = None
        self.link = LinkStats()
        self._bytes_at_last_stats = 0
        self.connected = False
        """A WHIP/WHEP peer connection has connected (they are watched, see Room.join)."""
        self.connect_deadline: asyncio.TimerHandle | None = None
        self.closed = False

    # What a site is in the room is the room's state, by identity: it outlives this
    # join (a reconnect, a restarted hub).

    @property
    def on_stage(self) -> bool:
        return self.identity in self.room.state.stage

    @property
    def hand_raised(self) -> bool:
        return self.identity in self.room.state.hands

    @property
    def hand_raised_at(self) -> float:
        return self.room.state.hands.get(self.identity, 0.0)

    @property
    def moderator_mutes(self) -> list[str]:
        """The sources a moderator muted (``Source`` values)."""
        return self.room.state.mutes.get(self.identity, [])

    def info(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "identity": self.identity,
            "name": self.name,
            "role": self.role.value,
            "hand_raised": self.hand_raised,
            "on_stage": self.on_stage,
            "can_moderate": self.grant.can_moderate,
            "can_chat": self.grant.can_chat,
            "publications": [p.info() for p in self.publications.values()],
        }

    def publication_by_source(self, source: Source) -> Publication | None:
        return next((p for p in self.publications.values() if p.source == source), None)

    def publish(
        self, source: Source, transceiver: RTCRtpTransceiver, codec: CodecInfo
    ) -> Publication:
        old = self.publication_by_source(source)
        if old is not None:
            self.unpublish(old)
        room = self.room
        up: UpTrack
        tap: ReceiverTap

        def request_keyframe() -> None:
            if up.media_ssrc is not None:
                room.tasks.spawn(tap.request_keyframe(up.media_ssrc), name="pli")

        def send_nack(nack: Coroutine[Any, Any, None]) -> None:
            if room.tasks.closed:
                nack.close()
            else:
                room.tasks.spawn(nack, name="nack")

        up = UpTrack(transceiver.kind, codec, room.stats, request_keyframe)
        tap = ReceiverTap(transceiver.receiver, up.on_rtp, spawn=send_nack)
        if up.kind == "video":
            tap.announce_bandwidth()
        else:
            report_downstream_loss(transceiver.receiver, lambda: downstream_loss(up))
        publication = Publication(self, source, up, tap)
        up.muted = source.value in self.moderator_mutes
        if up.muted:
            self.send(
                {"type": "muted", "source": source.value, "muted": True, "by_moderator": True}
            )
        self.publications[publication.id] = publication
        room.on_published(publication)
        return publication

    def unpublish(self, publication: Publication) -> None:
        if self.publications.pop(publication.id, None) is None:
            return
        if self.publisher is not None:
            self.publisher.forget(publication)
        publication.close()
        self.room.on_unpublished(publication)

    def set_muted(self, source: Source, muted: bool, by_moderator: bool) -> None:
        publication = self.publication_by_source(source)
        if publication is None:
            raise HubError("not_found", f"{self.name} publishes no {source.value}")
        if not muted and source.value in self.moderator_mutes and not by_moderator:
            raise HubError(
                "muted_by_moderator", f"a moderator muted your {source.value}; ask to be unmuted"
            )
        publication.up.muted = muted
        if by_moderator:
            self.room.set_moderator_mute(self.identity, source, muted)
        self.send(
            {"type": "muted", "source": source.value, "muted": muted, "by_moderator": by_moderator}
        )
        self.room.on_participant_changed(self)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.connect_deadline is not None:
            self.connect_deadline.cancel()
        for publication in list(self.publications.values()):
            publication.close()
        for peer in (self.subscriber, self.whep):
            if peer is not None:
                await peer.close()
        if self.publisher is not None:
            await self.publisher.close()


class Room:
    """A live conference on this node."""

    def __init__(
        self,
        name: RoomName,
        *,
        stats: ForwardingStats,
        ice_servers: list[RTCIceServer],
        announce_address: str | None,
        gather_first: str | None,
        empty_timeout: float,
        limits: RoomLimits,
        on_empty: Callable[[Room], None],
        on_presence: Callable[[Room, Participant, bool], None] = lambda room, p, here: None,
        on_event: Callable[[str, dict[str, Any]], None] = lambda channel, event: None,
        media_dirs: MediaDirs | None = None,
        on_recorded: Recorded | None = None,
        state: RoomState | None = None,
        on_state: Callable[[Room], None] = lambda room: None,
    ) -> None:
        self.name = name
        self.stats = stats
        self.ice_servers = ice_servers
        self.announce_address = announce_address
        self.gather_first = gather_first
        self.empty_timeout = empty_timeout
        self.limits = limits
        self._on_empty = on_empty
        self._on_presence = on_presence
        self._on_event = on_event
        """Publishes room events (roll call answers) for durable records elsewhere."""
        self.rollcall: RollCall | None = None
        self.created_at = time.time()
        self.participants: dict[ParticipantID, Participant] = {}
        self.state = state or RoomState()
        """What the room must not forget (see :mod:`hub.room_state`); every change to
        it goes through :meth:`state_changed`."""
        self._on_state = on_state
        self.order = itertools.count()
        """Appearances in this room (on stage, a new publication), in order."""
        self._appeared: dict[ParticipantID, int] = {}
        """When each participant on stage appeared there (the program's picture rule)."""
        self.sinks: list[FrameSink] = []
        self.media = RoomMedia(self, media_dirs or MediaDirs.under(Path("data")), on_recorded)
        self.tasks = TaskOwner(f"room {name}")
        self._update_pending = False
        self._speakers: list[ParticipantID] = []
        self._viewers_published = 0
        self._empty_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.tasks.spawn(self._speaker_loop(), name="speakers")
        self.tasks.spawn(self._stats_loop(), name="stats")
        self.tasks.spawn(self._bandwidth_loop(), name="bandwidth")
        self._arm_empty_timer()

    # --- membership ---

    def by_identity(self, identity: ParticipantIdentity) -> Participant | None:
        return next((p for p in self.participants.values() if p.identity == identity), None)

    async def join(
        self,
        grant: Grant,
        kind: ParticipantKind,
        send: Callable[[dict[str, Any]], None],
        address: str | None = None,
    ) -> Participant:
        if self.closed:
            raise HubError("room_closed", f"room {self.name} is closed")
        if grant.room != self.name:
            raise HubError("wrong_room", f"token is for room {grant.room}, not {self.name}")
        if grant.identity in self.state.removed:
            raise HubError("removed", "a moderator removed you from this room")
        # One identity, one participant: a second join replaces the first.
        previous = self.by_identity(grant.identity)
        self._check_room_for(kind, previous)
        participant = Participant(self, grant, kind, send, address)
        if previous is not None:
            # A reconnecting site keeps its place (stage, hand, mutes: the room's state).
            previous.send({"type": "removed", "reason": "duplicate_identity"})
            await self.leave(previous)
        self.participants[participant.sid] = participant
        if self._empty_timer is not None:
            self._empty_timer.cancel()
            self._empty_timer = None
        if grant.can_moderate or grant.role == Role.INGEST:
            self._put_on_stage(participant)
        elif participant.on_stage:  # back, or back after a restart
            self._appear(participant)
        if kind == "ws" and grant.can_subscribe:
            participant.subscriber = SubscriberPeer(
                make_peer_connection(self.ice_servers),
                self.stats,
                lambda sdp, tracks: participant.send(
                    {"type": "offer", "pc": "subscriber", "sdp": sdp, "tracks": tracks}
                ),
                self.announce_address,
            )
        if kind == "whep":
            participant.whep = WhepPeer(make_peer_connection(self.ice_servers), self.stats)
        if grant.can_publish and kind != "whep":
            participant.publisher = PublisherPeer(
                participant, make_peer_connection(self.ice_servers)
            )
        if participant.whep is not None:
            self._watch_peer(participant, participant.whep.pc)
        elif kind == "whip" and participant.publisher is not None:
            self._watch_peer(participant, participant.publisher.pc)
        self.broadcast(
            {"type": "participant_joined", "participant": participant.info()}, participant
        )
        if participant.on_stage:
            self._announce_stage()
        self._on_presence(self, participant, True)
        self.schedule_update()
        return participant

    def _check_room_for(self, kind: ParticipantKind, previous: Participant | None) -> None:
        """Refuse a join the room has no place for; one replacing ``previous`` takes its."""
        others = [p for p in self.participants.values() if p is not previous]
        if len(others) >= self.limits.max_participants:
            raise HubError(
                "room_full", f"room {self.name} is full ({self.limits.max_participants})"
            )
        viewers = sum(1 for p in others if p.kind == "whep")
        if kind == "whep" and viewers >= self.limits.max_viewers:
            raise HubError(
                "room_full",
                f"room {self.name} is full: {viewers} WebRTC viewers; try live HLS or later",
            )

    def _watch_peer(self, participant: Participant, pc: RTCPeerConnection) -> None:
        """WHIP and WHEP participants have no websocket to tell they are gone: their
        peer connection does. One that has not connected within the deadline, or
        that fails or closes, leaves."""

        def changed() -> None:
            if pc.connectionState == "connected":
                participant.connected = True
            elif pc.connectionState in ("failed", "closed"):
                self._drop(participant, f"its peer connection {pc.connectionState}")

        def expired() -> None:
            participant.connect_deadline = None
            if not participant.connected:
                self._drop(participant, f"not connected within {self.limits.connect_timeout} s")

        pc.on("connectionstatechange", changed)
        loop = asyncio.get_running_loop()
        participant.connect_deadline = loop.call_later(self.limits.connect_timeout, expired)

    def _drop(self, participant: Participant, why: str) -> None:
        if participant.sid in self.participants and not self.tasks.closed:
            logger.info("%s leaves room %s: %s", participant.identity, self.name, why)
            self.tasks.spawn(self.leave(participant), name="peer-gone")

    async def leave(self, participant: Participant) -> None:
        """The participant goes; its identity keeps its place in the room's state."""
        if self.participants.pop(participant.sid, None) is None:
            return
        was_on_stage = self._appeared.pop(participant.sid, None) is not None
        publications = list(participant.publications.values())
        await participant.close()
        for publication in publications:
            self._sinks_remove(publication)
        self.broadcast({"type": "participant_left", "sid": participant.sid})
        self._on_presence(self, participant, False)
        if was_on_stage:
            self._announce_stage()
        self.schedule_update()
        if not self.participants:
            self._arm_empty_timer()

    def _arm_empty_timer(self) -> None:
        if self.closed or self.empty_timeout < 0:
            return
        loop = asyncio.get_running_loop()
        self._empty_timer = loop.call_later(self.empty_timeout, self._expire_if_empty)

    def _expire_if_empty(self) -> None:
        self._empty_timer = None
        if not self.participants and not self.closed:
            self._on_empty(self)

    async def remove(self, participant: Participant) -> None:
        """A moderator's "remove": the identity leaves, loses its place on stage and its
        hand, and cannot join again (any link of it) until :meth:`readmit`."""
        identity = participant.identity
        self.state.removed[identity] = participant.name
        if identity in self.state.stage:
            self.state.stage.remove(identity)
        self.state.hands.pop(identity, None)
        self.state_changed()
        participant.send({"type": "removed", "reason": "removed_by_moderator"})
        await self.leave(participant)
        self._announce_removed()

    def readmit(self, identity: ParticipantIdentity) -> None:
        if self.state.removed.pop(identity, None) is None:
            raise HubError("not_found", f"{identity} was not removed from room {self.name}")
        self.state_changed()
        self._announce_removed()

    def removed_message(self) -> dict[str, Any]:
        return {
            "type": "removed_identities",
            "removed": [{"identity": i, "name": n} for i, n in self.state.removed.items()],
        }

    # --- the state that outlives the process ---

    def state_changed(self) -> None:
        """Hand the room's state to whoever keeps it (the Store, through the hub)."""
        if not self.closed:
            self._on_state(self)

    @property
    def public(self) -> bool:
        """Households may watch without an account (WHEP, live HLS)."""
        return self.state.public

    @public.setter
    def public(self, value: bool) -> None:
        if self.state.public != value:
            self.state.public = value
            self.state_changed()

    @property
    def audience(self) -> dict[ParticipantIdentity, str]:
        """The sites expected here, with their names: a roll call counts them."""
        return self.state.audience

    @audience.setter
    def audience(self, sites: dict[ParticipantIdentity, str]) -> None:
        if self.state.audience != sites:
            self.state.audience = dict(sites)
            self.state_changed()

    def set_moderator_mute(
        self, identity: ParticipantIdentity, source: Source, muted: bool
    ) -> None:
        mutes = [m for m in self.state.mutes.get(identity, []) if m != source.value]
        if muted:
            mutes.append(source.value)
        if mutes:
            self.state.mutes[identity] = mutes
        else:
            self.state.mutes.pop(identity, None)
        self.state_changed()

    def _announce_removed(self) -> None:
        self.to_moderators(self.removed_message())

    def participant(self, sid: str) -> Participant:
        found = self.participants.get(ParticipantID(sid))
        if found is None:
            raise HubError("not_found", f"no participant {sid} in room {self.name}")
        return found

    # --- stage and hands ---

    @property
    def stage(self) -> list[Participant]:
        """The participants on stage, in the order their identities came there."""
        here = {p.identity: p for p in self.participants.values()}
        return [here[i] for i in self.state.stage if i in here]

    def set_stage(self, participant: Participant, on_stage: bool) -> None:
        if participant.on_stage == on_stage:
            return
        if on_stage:
            self._put_on_stage(participant)
            self.state.hands.pop(participant.identity, None)
        else:
            self.state.stage.remove(participant.identity)
            self._appeared.pop(participant.sid, None)
            for publication in participant.publications.values():
                self._sinks_remove(publication)
        self.state_changed()
        participant.send({"type": "quality", "level": "stage" if on_stage else "thumbnail"})
        self._announce_stage()
        self.on_participant_changed(participant)
        self.schedule_update()

    def _put_on_stage(self, participant: Participant) -> None:
        if participant.identity not in self.state.stage:
            self.state.stage.append(participant.identity)
            self.state_changed()
        self._appear(participant)

    def _appear(self, participant: Participant) -> None:
        self._appeared[participant.sid] = next(self.order)
        for publication in participant.publications.values():
            self._sinks_add(publication)

    def _announce_stage(self) -> None:
        self.broadcast({"type": "stage", "stage": [p.sid for p in self.stage]})
        for sink in self.sinks:
            sink.on_stage_change([p.identity for p in self.stage], time.time())

    def set_hand(self, participant: Participant, raised: bool) -> None:
        if participant.hand_raised == raised:
            return
        if raised:
            self.state.hands[participant.identity] = time.time()
        else:
            self.state.hands.pop(participant.identity, None)
        self.state_changed()
        self.on_participant_changed(participant)

    # --- roll call ---

    def start_rollcall(self, seconds: float, expected: list[ParticipantIdentity]) -> RollCall:
        if self.rollcall is not None and not self.rollcall.closed:
            self.stop_rollcall()
        now = time.time()
        present = [p.identity for p in self.participants.values() if not p.grant.can_moderate]
        everyone = [*expected, *self.audience, *present]
        rollcall = RollCall(now, now + seconds, list(dict.fromkeys(everyone)))
        self.rollcall = rollcall
        self.broadcast({"type": "rollcall", "id": rollcall.id, "deadline": rollcall.deadline})
        self._rollcall_changed()
        asyncio.get_running_loop().call_later(seconds + 0.05, self._rollcall_changed)
        return rollcall

    def answer_rollcall(self, participant: Participant, rollcall_id: str) -> None:
        rollcall = self.rollcall
        if rollcall is None or rollcall.id != rollcall_id or rollcall.closed:
            raise HubError("not_found", "no such roll call is open")
        at = time.time()
        answer = rollcall.answer(participant.identity, at)
        self._on_event(
            "rollcall",
            {
                "room": self.name,
                "rollcall": rollcall.id,
                "identity": participant.identity,
                "status": answer.value,
                "at": at,
            },
        )
        self._rollcall_changed()

    def stop_rollcall(self) -> None:
        if self.rollcall is None:
            raise HubError("not_found", "no roll call is open")
        self.rollcall.closed = True
        self._rollcall_changed()

    def _rollcall_changed(self) -> None:
        if self.rollcall is not None and not self.closed:
            names = {**self.audience, **{p.identity: p.name for p in self.participants.values()}}
            status = self.rollcall.status(time.time())
            status["names"] = {i: names[i] for i in status["entries"] if i in names}
            self.to_moderators(status)

    def hands(self) -> list[Participant]:
        raised = [p for p in self.participants.values() if p.hand_raised]
        return sorted(raised, key=lambda p: p.hand_raised_at)

    # --- publications and who receives what ---

    def on_published(self, publication: Publication) -> None:
        self.on_participant_changed(publication.participant)
        if publication.participant.on_stage:
            self._sinks_add(publication)
        self.schedule_update()

    def on_unpublished(self, publication: Publication) -> None:
        self._sinks_remove(publication)
        self.on_participant_changed(publication.participant)
        self.schedule_update()

    def on_participant_changed(self, participant: Participant) -> None:
        if participant.sid in self.participants:
            self.broadcast({"type": "participant_updated", "participant": participant.info()})

    def desired_for(self, participant: Participant) -> list[Publication]:
        """What a participant receives: the stage, or everything for a moderator."""
        if not participant.grant.can_subscribe:
            return []
        senders = list(self.participants.values()) if participant.grant.can_moderate else self.stage
        return [
            publication
            for sender in senders
            if sender is not participant
            for publication in sender.publications.values()
        ]

    def program(self) -> tuple[Publication | None, list[Publication]]:
        """The stage as one picture and its voices, for households (WHEP, HLS):
        the latest to appear wins the picture — a shared screen, or a site called
        on stage — and every microphone on stage is heard."""
        best: tuple[int, Publication] | None = None
        microphones: list[Publication] = []
        for participant in self.stage:
            since = self._appeared.get(participant.sid, 0)
            for publication in participant.publications.values():
                if publication.kind == "audio":
                    microphones.append(publication)
                    continue
                stamp = max(since, publication.order)
                if publication.source == Source.CAMERA:
                    stamp = since
                if best is None or stamp > best[0]:
                    best = (stamp, publication)
        return (best[1] if best else None), microphones[::-1]

    def schedule_update(self) -> None:
        """Recompute every subscriber's set soon, once for a burst of changes."""
        if self._update_pending or self.closed:
            return
        self._update_pending = True
        self.tasks.spawn(self._update(), name="update")

    async def _update(self) -> None:
        await asyncio.sleep(0.02)
        self._update_pending = False
        updates = [
            self._update_one(p)
            for p in list(self.participants.values())
            if p.subscriber is not None
        ]
        await asyncio.gather(*updates)
        for participant in list(self.participants.values()):
            if participant.kind == "whep" and participant.whep is not None:
                participant.whep.follow(self.program())

    async def _update_one(self, participant: Participant) -> None:
        assert participant.subscriber is not None
        try:
            await participant.subscriber.update(self.desired_for(participant))
        except Exception:
            logger.exception("renegotiation with %s failed", participant.identity)

    # --- sinks: recorder, live HLS, restream ---

    def add_sink(self, sink: FrameSink) -> None:
        self.sinks.append(sink)
        sink.on_stage_change([p.identity for p in self.stage], time.time())
        for participant in self.stage:
            for publication in participant.publications.values():
                self._attach(sink, publication)

    def remove_sink(self, sink: FrameSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)
        for participant in self.participants.values():
            for publication in participant.publications.values():
                publication.up.frame_consumers = [
                    c
                    for c in publication.up.frame_consumers
                    if getattr(c, "sink", None) is not sink
                ]
                if not publication.up.frame_consumers:
                    publication.tap.set_frame_callback(None)

    def _sinks_add(self, publication: Publication) -> None:
        for sink in self.sinks:
            self._attach(sink, publication)

    def _attach(self, sink: FrameSink, publication: Publication) -> None:
        sink.add_track(publication.track_info())
        consumer = _SinkFeed(sink, publication.id, publication.up.codec)
        publication.up.frame_consumers.append(consumer)
        publication.tap.set_frame_callback(publication.up.on_frame)
        publication.up.keyframes.request()

    def _sinks_remove(self, publication: Publication) -> None:
        feeds = [c for c in publication.up.frame_consumers if isinstance(c, _SinkFeed)]
        publication.up.frame_consumers = []
        publication.tap.set_frame_callback(None)
        for feed in feeds:
            feed.sink.remove_track(publication.id)

    # --- messages ---

    def broadcast(self, message: dict[str, Any], exclude: Participant | None = None) -> None:
        for participant in self.participants.values():
            if participant is not exclude:
                participant.send(message)

    def to_moderators(self, message: dict[str, Any]) -> None:
        for participant in self.participants.values():
            if participant.grant.can_moderate:
                participant.send(message)

    async def _speaker_loop(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            now = time.monotonic()
            levels: list[tuple[int, ParticipantID]] = []
            for participant in self.participants.values():
                microphone = participant.publication_by_source(Source.MICROPHONE)
                if microphone is None or microphone.muted:
                    continue
                up = microphone.up
                if now - up.audio_level_at < 0.6 and up.audio_level <= SPEAKING_LEVEL:
                    levels.append((up.audio_level, participant.sid))
            speakers = [sid for _, sid in sorted(levels)]
            if speakers != self._speakers:
                self._speakers = speakers
                self.broadcast({"type": "speakers", "speakers": speakers})
                identities = [self.participants[s].identity for s in speakers]
                self._on_event("speakers", {"room": self.name, "speakers": identities})

    async def _bandwidth_loop(self) -> None:
        """Tell every video publisher it may send up to the ceiling; what it does send
        is set by its own encoder settings (thumbnail or stage)."""
        while True:
            await asyncio.sleep(1.0)
            for participant in list(self.participants.values()):
                for publication in list(participant.publications.values()):
                    ssrc = publication.up.media_ssrc
                    if publication.kind == "video" and ssrc is not None:
                        await publication.tap.send_remb(VIDEO_CEILING_BPS, ssrc)

    async def _stats_loop(self) -> None:
        interval = 2.0
        while True:
            await asyncio.sleep(interval)
            for participant in list(self.participants.values()):
                self._measure(participant, interval)
            viewers = self.media.household_viewers()
            if viewers != self._viewers_published:
                self._viewers_published = viewers
                self._on_event("viewers", {"room": self.name, "households": viewers})
            if any(p.grant.can_moderate for p in self.participants.values()):
                self.to_moderators(
                    {
                        "type": "stats",
                        "participants": {
                            p.sid: p.link.as_dict() for p in self.participants.values()
                        },
                    }
                )

    def _measure(self, participant: Participant, interval: float) -> None:
        received = sum(p.up.bytes_received for p in participant.publications.values())
        participant.link.bitrate_kbps = max(
            0.0, (received - participant._bytes_at_last_stats) * 8 / 1000 / interval
        )
        participant._bytes_at_last_stats = received
        peer = participant.subscriber or participant.whep
        if peer is None:
            return
        rtts: list[float] = []
        losses: list[float] = []
        for slot in peer.slots:
            if slot.publication is None:
                continue
            rtt, lost = slot.hook.receiver_report()
            if rtt is not None:
                rtts.append(rtt * 1000)
            if lost is not None:
                losses.append(lost)
        if rtts:
            participant.link.rtt_ms = round(sum(rtts) / len(rtts), 1)
        if losses:
            participant.link.loss = round(max(losses), 4)

    async def close(self, suspend: bool = False) -> None:
        """Close for good, or ``suspend`` (the hub stops and comes back: the clients are
        not told the room closed, they reconnect to the hub that restores it)."""
        if self.closed:
            return
        self.closed = True
        if self._empty_timer is not None:
            self._empty_timer.cancel()
        await self.media.close(suspend)
        for participant in list(self.participants.values()):
            if not suspend:
                participant.send({"type": "removed", "reason": "room_closed"})
            await self.leave(participant)
        await self.tasks.close()
        for sink in list(self.sinks):
            self.remove_sink(sink)


class _SinkFeed:
    """Turns an up track's frames into :class:`EncodedFrame` for one sink."""

    __slots__ = ("_clock_rate", "_codec", "_track_id", "sink")

    def __init__(self, sink: FrameSink, track_id: str, codec: CodecInfo) -> None:
        self.sink = sink
        self._track_id = track_id
        self._codec = codec.name
        self._clock_rate = codec.clock_rate

    def __call__(
        self, codec: str, data: bytes, timestamp: int, keyframe: bool, arrival: float
    ) -> None:
        self.sink.on_frame(
            self._track_id,
            EncodedFrame(
                codec=self._codec,  # type: ignore[arg-type]
                data=data,
                timestamp=timestamp,
                clock_rate=self._clock_rate,
                keyframe=keyframe,
                arrival=arrival,
            ),
        )
