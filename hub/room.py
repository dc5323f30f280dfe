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

from hub import messages as m
from hub import policy
from hub.aiortc_internals import ReceiverTap, report_downstream_loss
from hub.errors import HubError
from hub.forwarding import CodecInfo, ForwardingStats, Layer, UpTrack, downstream_loss
from hub.ids import ParticipantID, ParticipantIdentity, PublicationID, RoomName
from hub.limits import RoomLimits
from hub.peers import PublisherPeer, SubscriberPeer, WhepPeer, make_peer_connection
from hub.rollcall import RollCall
from hub.room_media import MediaDirs, Recorded, RoomMedia
from hub.room_state import RoomState
from hub.stall import FlowWatch
from hub.tasks import TaskOwner
from hub.tokens import Grant, Role, Source
from hub.udpmux import UdpMux
from media.frames import EncodedFrame, FrameSink, TrackInfo

logger = logging.getLogger(__name__)

VIDEO_CEILING_BPS = 2_500_000
"""The bandwidth the hub announces to video publishers (REMB): a stage camera's
1.5 Mbps or a screen share fits under it."""
STALL_TICK = 0.5
"""Seconds between looks at each stage track's packet count (stall detection)."""
SPEAKING_LEVEL = 60
"""Audio level (0 loudest … 127 silent, dBov) under which a publisher is speaking."""

ParticipantKind = Literal["ws", "whip", "whep"]


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
        """When it started, among the room's publications (the program's picture rule)."""
        self.flow = FlowWatch()
        self.closed = False

    @property
    def kind(self) -> str:
        return self.up.kind

    @property
    def muted(self) -> bool:
        return self.up.muted

    def info(self) -> m.PublicationInfo:
        return m.PublicationInfo(
            publication=self.id,
            source=self.source.value,
            kind=self.track_info().kind,
            codec=self.up.codec.name,
            muted=self.muted,
            muted_by_moderator=self.source.value in self.participant.moderator_mutes,
            stalled=self.flow.stalled,
        )

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


def _seen_by_all(participant: Participant) -> bool:
    return participant.on_stage or participant.grant.can_moderate


class Participant:
    """One join of one identity into a room."""

    def __init__(
        self,
        room: Room,
        grant: Grant,
        kind: ParticipantKind,
        send: Callable[[m.Outgoing], None],
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
        self.uplink = policy.Uplink("thumbnail")
        """How it was last told to send (``joined``, then ``quality``)."""
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

    def info(self) -> m.ParticipantInfo:
        return m.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.name,
            role=self.role.value,
            hand_raised=self.hand_raised,
            on_stage=self.on_stage,
            can_moderate=self.grant.can_moderate,
            can_chat=self.grant.can_chat,
            publications=[p.info() for p in self.publications.values()],
        )

    def publication_by_source(self, source: Source) -> Publication | None:
        return next((p for p in self.publications.values() if p.source == source), None)

    def publish(
        self,
        source: Source,
        transceiver: RTCRtpTransceiver,
        codec: CodecInfo,
        rids: tuple[str, ...] = (),
    ) -> Publication:
        """``rids``: the simulcast layers it is sent in, lowest first (none: sent once)."""
        old = self.publication_by_source(source)
        if old is not None:
            self.unpublish(old)
        room = self.room
        up: UpTrack
        tap: ReceiverTap

        def request_keyframe(layer: Layer) -> None:
            if layer.media_ssrc is not None:
                room.tasks.spawn(tap.request_keyframe(layer.media_ssrc), name="pli")

        def send_nack(nack: Coroutine[Any, Any, None]) -> None:
            if room.tasks.closed:
                nack.close()
            else:
                room.tasks.spawn(nack, name="nack")

        up = UpTrack(transceiver.kind, codec, room.stats, request_keyframe, rids)
        layers = [(layer.rid, layer.on_rtp) for layer in up.layers if layer.rid is not None]
        tap = ReceiverTap(
            transceiver.receiver, up.on_rtp, spawn=send_nack, layers=layers, sink=up.sink
        )
        if up.kind == "video":
            tap.announce_bandwidth()
        else:
            report_downstream_loss(transceiver.receiver, lambda: downstream_loss(up))
        publication = Publication(self, source, up, tap)
        up.muted = source.value in self.moderator_mutes
        if up.muted:
            self.send(m.Muted(source=source.value, muted=True, by_moderator=True))
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
        self.send(m.Muted(source=source.value, muted=muted, by_moderator=by_moderator))
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
        udp_mux: UdpMux | None = None,
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
        self.udp_mux = udp_mux
        """The hub's one UDP port (``HUB_UDP_PORT``), or None: a port per peer."""
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
        """Publications of this room, in the order they started (the program's rule)."""
        self.views: dict[ParticipantID, policy.View] = {}
        """What each moderator's console shows, once it has said (``view``)."""
        self._appeared: set[ParticipantID] = set()
        """The participants shown on stage (the sinks have their publications)."""
        self._known_to_all: set[ParticipantID] = set()
        """The participants every member was last told about (see :meth:`sees`)."""
        self.sinks: list[FrameSink] = []
        self.media = RoomMedia(self, media_dirs or MediaDirs.under(Path("data")), on_recorded)
        self.tasks = TaskOwner(f"room {name}")
        self._update_pending = False
        self._speakers: list[ParticipantID] = []
        self.floor = policy.Floor()
        """The stage voice WHEP viewers with a single audio track hear (the speaker)."""
        self._viewers_published = 0
        self._empty_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.tasks.spawn(self._speaker_loop(), name="speakers")
        self.tasks.spawn(self._stats_loop(), name="stats")
        self.tasks.spawn(self._bandwidth_loop(), name="bandwidth")
        self.tasks.spawn(self._stall_loop(), name="stalls")
        self._arm_empty_timer()

    # --- membership ---

    def by_identity(self, identity: ParticipantIdentity) -> Participant | None:
        return next((p for p in self.participants.values() if p.identity == identity), None)

    async def join(
        self,
        grant: Grant,
        kind: ParticipantKind,
        send: Callable[[m.Outgoing], None],
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
            previous.send(m.Removed(reason="duplicate_identity"))
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
                make_peer_connection(self.ice_servers, self.udp_mux),
                self.stats,
                participant.send,
                self.announce_address,
            )
        if kind == "whep":
            participant.whep = WhepPeer(
                make_peer_connection(self.ice_servers, self.udp_mux), self.stats
            )
        if grant.can_publish and kind != "whep":
            participant.publisher = PublisherPeer(
                participant, make_peer_connection(self.ice_servers, self.udp_mux)
            )
        if participant.whep is not None:
            self._watch_peer(participant, participant.whep.pc)
        elif kind == "whip" and participant.publisher is not None:
            self._watch_peer(participant, participant.publisher.pc)
        self._tell_about(participant, m.ParticipantJoined(participant=participant.info()))
        if participant.on_stage:
            self._announce_stage()
            participant.uplink = policy.Uplink("stage")
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
        self.views.pop(participant.sid, None)
        was_on_stage = participant.sid in self._appeared
        self._appeared.discard(participant.sid)
        publications = list(participant.publications.values())
        await participant.close()
        for publication in publications:
            self._sinks_remove(publication)
        self._tell_about(participant, m.ParticipantLeft(sid=participant.sid), gone=True)
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
        participant.send(m.Removed(reason="removed_by_moderator"))
        await self.leave(participant)
        self._announce_removed()

    def readmit(self, identity: ParticipantIdentity) -> None:
        if self.state.removed.pop(identity, None) is None:
            raise HubError("not_found", f"{identity} was not removed from room {self.name}")
        self.state_changed()
        self._announce_removed()

    def removed_message(self) -> m.RemovedIdentities:
        return m.RemovedIdentities(
            removed=[m.RemovedIdentity(identity=i, name=n) for i, n in self.state.removed.items()]
        )

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
            self._appeared.discard(participant.sid)
            for publication in participant.publications.values():
                self._sinks_remove(publication)
        self.state_changed()
        self._announce_stage()
        self.on_participant_changed(participant)
        self.schedule_update()

    def _put_on_stage(self, participant: Participant) -> None:
        if participant.identity not in self.state.stage:
            self.state.stage.append(participant.identity)
            self.state_changed()
        self._appear(participant)

    def _appear(self, participant: Participant) -> None:
        self._appeared.add(participant.sid)
        for publication in participant.publications.values():
            self._sinks_add(publication)

    def _announce_stage(self) -> None:
        self.broadcast(m.Stage(stage=[p.sid for p in self.stage]))
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
        self.schedule_update()  # a raised hand reaches the moderators' ears

    def set_view(self, moderator: Participant, tiles: list[str], listen: list[str]) -> None:
        """What ``moderator``'s console shows now (sids not in the room are ignored)."""
        here = self.participants
        self.views[moderator.sid] = policy.View(
            frozenset(ParticipantID(s) for s in tiles if s in here),
            frozenset(ParticipantID(s) for s in listen if s in here),
        )
        self.schedule_update()

    # --- roll call ---

    def start_rollcall(self, seconds: float, expected: list[ParticipantIdentity]) -> RollCall:
        if self.rollcall is not None and not self.rollcall.closed:
            self.stop_rollcall()
        now = time.time()
        present = [p.identity for p in self.participants.values() if not p.grant.can_moderate]
        everyone = [*expected, *self.audience, *present]
        rollcall = RollCall(now, now + seconds, list(dict.fromkeys(everyone)))
        self.rollcall = rollcall
        self.broadcast(m.RollCallStarted(id=rollcall.id, deadline=rollcall.deadline))
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
            self.to_moderators(m.RollCallStatus.model_validate(status))

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
            self._tell_about(participant, m.ParticipantUpdated(participant=participant.info()))

    @staticmethod
    def sees(viewer: Participant, other: Participant) -> bool:
        """Whether ``viewer`` is told of ``other`` (joins, changes, leaving). Moderators
        see everyone; the others see themselves, the moderators and the stage: a
        village needs to know who speaks, not the other 189 villages, and a storm of
        190 joins would otherwise send everyone everyone's, 190 times over."""
        return viewer.grant.can_moderate or other is viewer or _seen_by_all(other)

    def _tell_about(self, about: Participant, message: m.Outgoing, gone: bool = False) -> None:
        """Send a message about ``about`` to everyone who sees it, and to everyone who
        saw it until now (a site sent back from the stage: its last update)."""
        was_known = about.sid in self._known_to_all
        known = not gone and _seen_by_all(about)
        if known:
            self._known_to_all.add(about.sid)
        else:
            self._known_to_all.discard(about.sid)
        for participant in self.participants.values():
            if participant is about and not isinstance(message, m.ParticipantUpdated):
                continue  # its own join and leaving it knows of
            if known or was_known or self.sees(participant, about):
                participant.send(message)

    def _member(self, participant: Participant) -> policy.Member:
        return policy.Member(
            sid=participant.sid,
            publications=tuple(
                policy.Pub(p.id, p.source.value, p.track_info().kind, p.order)
                for p in participant.publications.values()
            ),
            can_subscribe=participant.grant.can_subscribe,
            can_moderate=participant.grant.can_moderate,
            on_stage=participant.on_stage,
            hand_raised=participant.hand_raised,
        )

    def _publications(self, ids: list[PublicationID]) -> list[Publication]:
        by_id = {
            p.id: p for member in self.participants.values() for p in member.publications.values()
        }
        return [by_id[i] for i in ids if i in by_id]

    def program(self) -> tuple[Publication | None, list[Publication]]:
        """The stage as one picture and its voices, for households (:func:`hub.policy.program`)."""
        chosen = policy.program([self._member(p) for p in self.stage])
        video = self._publications([PublicationID(chosen.video)] if chosen.video else [])
        return (video[0] if video else None), self._publications(
            [PublicationID(a) for a in chosen.audio]
        )

    def schedule_update(self) -> None:
        """Recompute every subscriber's set soon, once for a burst of changes."""
        if self._update_pending or self.closed:
            return
        self._update_pending = True
        self.tasks.spawn(self._update(), name="update")

    async def _update(self) -> None:
        """Apply :mod:`hub.policy` to everyone, from one snapshot of the room."""
        await asyncio.sleep(0.02)
        self._update_pending = False
        participants = list(self.participants.values())
        members = [self._member(p) for p in participants]
        by_id = {pub.id: pub for p in participants for pub in p.publications.values()}
        received = policy.receives(members, self.views)
        shows = {pub.id: policy.shows(member) for member in members for pub in member.publications}
        for participant in participants:
            if participant.subscriber is not None:
                participant.subscriber.set_shows(shows)
        updates = [
            self._update_one(participant, [by_id[i] for i in received[participant.sid]])
            for participant in participants
            if participant.subscriber is not None
        ]
        self._apply_uplinks(members)
        self._follow_program()
        await asyncio.gather(*updates)

    def _follow_program(self) -> None:
        program = self.program()
        for participant in self.participants.values():
            if participant.whep is not None:
                participant.whep.follow(program, self.floor.holder)

    def _apply_uplinks(self, members: list[policy.Member]) -> None:
        """Tell each participant how to send, when that changed; a camera that
        resumes (or changes size) starts at a keyframe."""
        for sid, uplink in policy.uplinks(members, self.views).items():
            participant = self.participants[sid]
            if uplink == participant.uplink:
                continue
            participant.uplink = uplink
            participant.send(m.Quality(level=uplink.level, microphone=uplink.microphone))
            for publication in participant.publications.values():
                if publication.kind == "video":
                    publication.up.request_keyframe()

    async def _update_one(self, participant: Participant, desired: list[Publication]) -> None:
        assert participant.subscriber is not None
        try:
            await participant.subscriber.update(desired)
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
        publication.up.top.request_keyframe()

    def _sinks_remove(self, publication: Publication) -> None:
        feeds = [c for c in publication.up.frame_consumers if isinstance(c, _SinkFeed)]
        publication.up.frame_consumers = []
        publication.tap.set_frame_callback(None)
        for feed in feeds:
            feed.sink.remove_track(publication.id)

    # --- messages ---

    def broadcast(self, message: m.Outgoing, exclude: Participant | None = None) -> None:
        for participant in self.participants.values():
            if participant is not exclude:
                participant.send(message)

    def to_moderators(self, message: m.Outgoing) -> None:
        for participant in self.participants.values():
            if participant.grant.can_moderate:
                participant.send(message)

    async def _speaker_loop(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            now = time.monotonic()
            levels: list[tuple[int, ParticipantID]] = []
            speaking: dict[PublicationID, int] = {}
            for participant in self.participants.values():
                microphone = participant.publication_by_source(Source.MICROPHONE)
                if microphone is None or microphone.muted:
                    continue
                up = microphone.up
                if now - up.audio_level_at < 0.6 and up.audio_level <= SPEAKING_LEVEL:
                    levels.append((up.audio_level, participant.sid))
                    speaking[microphone.id] = up.audio_level
            self._pass_floor(speaking, now)
            speakers = [sid for _, sid in sorted(levels)]
            if speakers != self._speakers:
                self._speakers = speakers
                self.broadcast(m.Speakers(speakers=list[str](speakers)))
                identities = [self.participants[s].identity for s in speakers]
                self._on_event("speakers", {"room": self.name, "speakers": identities})

    def _pass_floor(self, speaking: dict[PublicationID, int], now: float) -> None:
        """Move the floor to the current speaker (:func:`hub.policy.next_floor`); the
        WHEP viewers that hear it follow when it moves."""
        if not any(p.whep is not None for p in self.participants.values()):
            return
        _, voices = self.program()
        floor = policy.next_floor(self.floor, [v.id for v in voices], speaking, now)
        moved = floor.holder != self.floor.holder
        self.floor = floor
        if moved:
            self._follow_program()

    async def _stall_loop(self) -> None:
        """Tell the room when a track on stage stops arriving and when it is back; a
        video back asks for a keyframe at once, so its viewers see it again."""
        while True:
            await asyncio.sleep(STALL_TICK)
            now = time.monotonic()
            timeout = self.limits.stall_timeout
            for participant in list(self.participants.values()):
                watched = participant.on_stage
                changed = False
                for publication in participant.publications.values():
                    up = publication.up
                    if publication.flow.sample(up.packets_received, now, timeout, watched):
                        changed = True
                        logger.info(
                            "%s's %s %s",
                            participant.identity,
                            publication.source.value,
                            "stalled" if publication.flow.stalled else "flows again",
                        )
                        if not publication.flow.stalled and up.kind == "video":
                            up.request_keyframe()
                if changed:
                    self.on_participant_changed(participant)

    async def _bandwidth_loop(self) -> None:
        """Tell every video publisher it may send up to the ceiling; what it does send
        is set by its own encoder settings (thumbnail or stage)."""
        while True:
            await asyncio.sleep(1.0)
            for participant in list(self.participants.values()):
                for publication in list(participant.publications.values()):
                    ssrcs = publication.up.media_ssrcs()
                    if publication.kind == "video" and ssrcs:
                        await publication.tap.send_remb(VIDEO_CEILING_BPS, ssrcs)

    async def _stats_loop(self) -> None:
        interval = 2.0
        while True:
            await asyncio.sleep(interval)
            for participant in list(self.participants.values()):
                self._measure(participant, interval)
            for participant in list(self.participants.values()):
                peer = participant.subscriber or participant.whep
                if peer is not None:
                    peer.follow_layers()  # the layers' rates moved on
            viewers = self.media.household_viewers()
            if viewers != self._viewers_published:
                self._viewers_published = viewers
                self._on_event("viewers", {"room": self.name, "households": viewers})
            if any(p.grant.can_moderate for p in self.participants.values()):
                self.to_moderators(
                    m.Stats(
                        participants={
                            p.sid: m.LinkInfo(
                                rtt_ms=p.link.rtt_ms,
                                loss=p.link.loss,
                                bitrate_kbps=p.link.bitrate_kbps,
                                uplink=p.uplink.level,
                            )
                            for p in self.participants.values()
                        }
                    )
                )

    def _measure(self, participant: Participant, interval: float) -> None:
        for publication in participant.publications.values():
            publication.up.measure(interval)
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
                participant.send(m.Removed(reason="room_closed"))
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
