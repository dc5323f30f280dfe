"""The hub of one node: its rooms, its place in the cluster, its token signer."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from aiortc import RTCIceServer

from cluster.store import Bus, Store
from hub.aiortc_internals import (
    accept_offered_payload_types,
    check_internals,
    host_addresses,
    install_datagram_path,
    install_h264_profiles,
    install_opus_fec,
    install_red,
    install_simulcast_extensions,
    keep_consent_while_heard,
    restrict_host_addresses,
)
from hub.errors import HubError
from hub.forwarding import ForwardingStats
from hub.ids import NodeID, RoomName, valid_room_name
from hub.limits import RoomLimits
from hub.room import Participant, Room
from hub.room_media import MediaDirs, Recorded
from hub.room_state import STATE_KEY, RoomState, state_key
from hub.settings import Settings
from hub.tasks import TaskOwner
from hub.tokens import Grant, TokenError, TokenSigner
from hub.turn import turn_ice_server
from hub.udpmux import UdpMux

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
"""Seconds between a node's heartbeats; it is dead three beats after its last, and a
live node takes its rooms over at its next beat."""
RESOURCE_KEY = "media-session:"
"""Store key prefix of a WHIP/WHEP session, by the secret in its URL: which room, which
participant, and whether ending it needs a token. It lasts while its node does."""
PRESENCE_TTL = 30.0
PRESENCE_CHANNEL = "presence"


class Hub:
    """Owns the rooms on this node; created and closed by the app's lifespan."""

    def __init__(self, settings: Settings, store: Store, bus: Bus) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.signer = TokenSigner(settings.resolved_secret())
        self.node_id = NodeID(settings.node_id or f"node-{secrets.token_hex(4)}")
        self.stats = ForwardingStats()
        self.rooms: dict[RoomName, Room] = {}
        # The configured STUN/TURN servers are for the sites' browsers; the hub
        # announces its own address and never needs a relay (nor a public STUN).
        self.ice_servers: list[RTCIceServer] = []
        self.udp_mux: UdpMux | None = None
        """The one UDP port of every peer connection (``HUB_UDP_PORT``), from start()."""
        self.tasks = TaskOwner("hub")
        self.started_at = time.time()
        self._room_locks: dict[RoomName, asyncio.Lock] = {}
        self._unsaved: set[RoomName] = set()
        """Rooms whose state changed since it was last written to the Store."""
        self.nodes: dict[NodeID, dict[str, Any]] = {}
        """The cluster's live nodes and their heartbeat info, as of this node's last
        heartbeat."""
        self.node_urls: list[str] = []
        """Where the other live nodes are reached (HUB_NODE_URL): the pages may follow a
        redirect there. Kept with ``nodes``, not derived per request: every answer's
        CSP names them."""
        self.on_recorded: Recorded | None = None
        """Set by the app: hands a finished recording to the library."""

    @property
    def state_ttl(self) -> float:
        """How long a room's state outlives the last word of its node: the empty-room
        grace period (a restarted hub takes the room back within it) and a heartbeat."""
        return max(self.settings.room_empty_timeout, 0.0) + 2 * HEARTBEAT_INTERVAL

    async def start(self) -> None:
        await check_internals()
        install_h264_profiles()
        install_opus_fec()
        install_red()
        install_simulcast_extensions()
        accept_offered_payload_types()
        keep_consent_while_heard(self.settings.peer_silence_timeout)
        install_datagram_path()
        restrict_host_addresses(self.settings.ice_gather_addresses)
        if self.settings.udp_port is not None:
            self.udp_mux = UdpMux.open(host_addresses(), self.settings.udp_port)
        await self._heartbeat()
        self.tasks.spawn(self._heartbeat_loop(), name="heartbeat")
        await self.restore_rooms()

    async def restore_rooms(self, *, orphans_only: bool = False) -> list[RoomName]:
        """Open again the rooms whose state outlived their node (this hub before a
        restart, or a dead node of the cluster): stage, hands, mutes, removals as they
        were; live HLS, restreams and the recording (a new part) resume at once. Clients
        rejoin by themselves. ``orphans_only``: only rooms of other nodes, now dead.
        Which nodes live is as the last heartbeat found."""
        alive = self.nodes
        restored: list[RoomName] = []
        for key, doc in (await self.store.scan(STATE_KEY)).items():
            name = RoomName(key.removeprefix(STATE_KEY))
            node = doc.get("node")
            if node in alive and node != self.node_id:
                continue  # its node is alive: the room is still there
            if orphans_only and (node == self.node_id or name in self.rooms):
                continue
            try:
                await self.room(name)
            except HubError as exc:
                if exc.code != "room_elsewhere":  # another live node was first
                    logger.warning("room %s not restored: %s", name, exc.message)
                continue
            restored.append(name)
        if restored:
            logger.info("restored rooms %s on %s", ", ".join(restored), self.node_id)
        return restored

    async def recordings_in_progress(self) -> set[str]:
        """The directories recordings go on into, on any node (every room's state)."""
        parts = {p for room in self.rooms.values() for p in room.state.recording or []}
        for doc in (await self.store.scan(STATE_KEY)).values():
            parts.update(RoomState.from_json(doc).recording or [])
        return parts

    def ice_servers_for_clients(self, identity: str) -> list[dict[str, Any]]:
        """The configured servers, and the TURN servers with credentials for
        ``identity`` made now (coturn's REST API scheme)."""
        settings = self.settings
        servers = [s.model_dump(exclude_none=True) for s in settings.ice_servers]
        if settings.turn_urls and settings.turn_secret:
            servers.append(
                turn_ice_server(
                    settings.turn_urls,
                    settings.turn_secret,
                    identity,
                    settings.turn_ttl,
                    time.time(),
                )
            )
        return servers

    def verify(self, token: str) -> Grant:
        """A token's grant, or a :class:`HubError` with the protocol's code."""
        try:
            return self.signer.verify(token)
        except TokenError as exc:
            code = "token_expired" if "expired" in exc.reason else "invalid_token"
            raise HubError(code, exc.reason) from None

    async def room(self, name: RoomName, *, create: bool = True) -> Room:
        """The room on this node, created (and claimed in the cluster) if needed."""
        try:
            valid_room_name(name)  # its media go to directories named after it
        except ValueError as exc:
            raise HubError("bad_message", str(exc)) from None
        lock = self._room_locks.setdefault(name, asyncio.Lock())
        async with lock:
            room = self.rooms.get(name)
            if room is not None and not room.closed:
                return room
            if not create:
                raise HubError("not_found", f"no room {name}")
            owner = await self.store.claim_room(name, self.node_id)
            if owner != self.node_id:
                raise HubError("room_elsewhere", f"room {name} lives on node {owner}")
            saved = await self.store.get(state_key(name))
            gather = self.settings.ice_gather_addresses
            room = Room(
                name,
                stats=self.stats,
                ice_servers=self.ice_servers,
                udp_mux=self.udp_mux,
                announce_address=self.settings.ice_announce_address,
                gather_first=gather[0] if gather else None,
                empty_timeout=self.settings.room_empty_timeout,
                limits=RoomLimits.from_settings(self.settings),
                on_empty=self._close_when_empty,
                on_presence=self._presence_changed,
                on_event=self._room_event,
                media_dirs=MediaDirs(
                    self.settings.resolved_media_dir() / "recordings",
                    self.settings.data_dir / "live",
                ),
                on_recorded=self._recorded,
                state=RoomState.from_json(saved) if saved is not None else None,
                on_state=self._state_changed,
            )
            self.rooms[name] = room
            if saved is not None:
                logger.info("room %s restored on %s", name, self.node_id)
                room.media.resume()
            else:
                logger.info("room %s opened on %s", name, self.node_id)
            self._state_changed(room)
            return room

    async def _recorded(self, room: str, parts: list[Path]) -> None:
        if self.on_recorded is not None:
            await self.on_recorded(room, parts)

    def _state_changed(self, room: Room) -> None:
        """Write the room's state soon: one write for a burst of changes."""
        if not self._unsaved:
            self.tasks.spawn(self._save_states(), name="save-state")
        self._unsaved.add(room.name)

    async def _save_states(self) -> None:
        await asyncio.sleep(0)  # let the rest of this burst of changes happen
        while self._unsaved:
            name = self._unsaved.pop()
            room = self.rooms.get(name)
            if room is not None and not room.closed:
                doc = room.state.to_json(self.node_id)
                await self.store.put(state_key(name), doc, self.state_ttl)

    def _close_when_empty(self, room: Room) -> None:
        self.tasks.spawn(self.close_room(room.name), name="close-room")

    async def close_room(self, name: RoomName) -> bool:
        """Close a room for good: its recording goes to the library, its state is
        forgotten."""
        room = self.rooms.pop(name, None)
        if room is None:
            return False
        await room.close()
        await self.store.delete(state_key(name))
        await self.store.release_room(name, self.node_id)
        self._room_locks.pop(name, None)
        logger.info("room %s closed", name)
        return True

    async def _suspend_room(self, name: RoomName) -> None:
        """This hub stops (a restart, an upgrade): the room's media end cleanly, its
        state stays in the Store for the hub that comes back within the grace period."""
        room = self.rooms.pop(name)
        await self.store.put(state_key(name), room.state.to_json(self.node_id), self.state_ttl)
        await room.close(suspend=True)
        await self.store.release_room(name, self.node_id)
        self._room_locks.pop(name, None)
        logger.info("room %s suspended: its state waits for the next start", name)

    def _presence_info(self, participant: Participant) -> dict[str, Any]:
        return {
            "sid": participant.sid,
            "name": participant.name,
            "role": participant.role.value,
            "node": self.node_id,
            "joined_at": participant.joined_at,
            "on_stage": participant.on_stage,
            "link": participant.link.as_dict(),
        }

    def _presence_changed(self, room: Room, participant: Participant, here: bool) -> None:
        """Joins and leaves reach the Store and the Bus at once (the dashboard)."""
        self.tasks.spawn(self._publish_presence(room, participant, here), name="presence")

    async def save_resource(self, participant: Participant) -> None:
        """Keep a WHIP/WHEP session's record (``participant.resource``) in the Store."""
        assert participant.resource is not None
        doc = {
            "kind": participant.kind,
            "room": participant.room.name,
            "participant": participant.sid,
            "identity": participant.identity,
            "with_token": participant.resource_needs_token,
            "node": self.node_id,
        }
        await self.store.put(RESOURCE_KEY + participant.resource, doc, HEARTBEAT_INTERVAL * 3)

    async def _publish_presence(self, room: Room, participant: Participant, here: bool) -> None:
        if not here and participant.resource is not None:
            await self.store.delete(RESOURCE_KEY + participant.resource)
        if here:
            info = self._presence_info(participant)
            await self.store.set_presence(room.name, participant.identity, info, PRESENCE_TTL)
        else:
            await self.store.remove_presence(room.name, participant.identity)
        await self.bus.publish(
            PRESENCE_CHANNEL,
            {
                "room": room.name,
                "identity": participant.identity,
                "here": here,
                "node": self.node_id,
                "at": time.time(),
            },
        )

    def _room_event(self, channel: str, event: dict[str, Any]) -> None:
        self.tasks.spawn(self.bus.publish(channel, {**event, "node": self.node_id}), name=channel)

    async def set_presence(self, room: Room) -> None:
        for participant in list(room.participants.values()):
            info = self._presence_info(participant)
            await self.store.set_presence(room.name, participant.identity, info, PRESENCE_TTL)

    async def _heartbeat(self) -> None:
        await self.store.heartbeat(
            self.node_id,
            {
                "rooms": len(self.rooms),
                "participants": sum(len(r.participants) for r in self.rooms.values()),
                "started_at": self.started_at,
                "url": self.settings.resolved_node_url(),
            },
            HEARTBEAT_INTERVAL * 3,
        )
        self.nodes = await self.store.nodes()
        self.node_urls = sorted(
            {str(i["url"]) for n, i in self.nodes.items() if n != self.node_id and i.get("url")}
        )
        for room in list(self.rooms.values()):
            # Claim again: a restarted Redis forgets which node holds which room; if
            # another node claimed it meanwhile, it is that node's: one host only.
            owner = await self.store.claim_room(room.name, self.node_id)
            if owner != self.node_id:
                await self._give_up_room(room, owner)
                continue
            await self.set_presence(room)
            for participant in list(room.participants.values()):
                if participant.resource is not None:
                    await self.save_resource(participant)
            # The state lasts while this node does.
            await self.store.put(
                state_key(room.name), room.state.to_json(self.node_id), self.state_ttl
            )

    async def _give_up_room(self, room: Room, owner: NodeID) -> None:
        """Another node holds this room: its clients go there (they rejoin by
        themselves), and the state is that node's to write."""
        logger.error("room %s is held by node %s too: given up here", room.name, owner)
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        await room.close(suspend=True)
        self._room_locks.pop(room.name, None)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self._heartbeat()
                await self.restore_rooms(orphans_only=True)
            except Exception:
                logger.exception("heartbeat failed")

    async def close(self) -> None:
        """The hub stops: its rooms are suspended, not closed (see :meth:`_suspend_room`).
        Rooms first: their last presence changes still go out through the tasks."""
        for name in list(self.rooms):
            await self._suspend_room(name)
        await self.tasks.close()
        if self.udp_mux is not None:
            self.udp_mux.close()  # after the rooms: their peers closed their endpoints
