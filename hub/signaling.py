"""The ``/ws`` signaling endpoint; the protocol is written down in PROTOCOL.md."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from hub import messages as m
from hub.errors import HubError
from hub.ids import ParticipantIdentity
from hub.limits import TokenBucket
from hub.messages import (
    INCOMING,
    Answer,
    AudioOnly,
    Candidate,
    Chat,
    Hand,
    Join,
    Leave,
    Moderate,
    Mute,
    Offer,
    Ping,
    RestartIce,
    RollCallAck,
    RollCallMessage,
    Unpublish,
    VideoCap,
    View,
)
from hub.peers import SdpError
from hub.room import Participant, Room
from hub.service import Hub

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024
OUTBOX_LIMIT = 4096
"""Messages queued for one client before it counts as too slow and is dropped."""
FLUSH_TIMEOUT = 2.0
"""Seconds a closing socket has to take what is queued for it (the error that says why)."""


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"{where}: {first['msg']}"


class _Close(Exception):
    """Ends the connection after the current message, with a websocket close code."""

    def __init__(self, code: int = 1000, reason: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Connection:
    """One websocket: reads messages in order, writes through a bounded outbox."""

    def __init__(self, hub: Hub, websocket: WebSocket) -> None:
        self.hub = hub
        self.websocket = websocket
        self.outbox: asyncio.Queue[m.Outgoing | None] = asyncio.Queue(OUTBOX_LIMIT)
        self.participant: Participant | None = None
        self.room: Room | None = None
        settings = hub.settings
        self._messages = TokenBucket(settings.signaling_rate, settings.signaling_burst)
        self._dropped = 0
        """Messages dropped over the rate since the bucket was last full."""
        self._chats = TokenBucket(settings.chat_per_minute / 60, settings.chat_per_minute)
        self._closing = _Close()
        self._joining = False
        """A join is being handled: the join deadline no longer applies."""
        self._handlers: dict[str, Callable[[Any], Awaitable[None]]] = {
            "offer": self._offer,
            "answer": self._answer,
            "restart_ice": self._restart_ice,
            "candidate": self._candidate,
            "unpublish": self._unpublish,
            "mute": self._mute,
            "hand": self._hand,
            "audio_only": self._audio_only,
            "video_cap": self._video_cap,
            "chat": self._chat,
            "moderate": self._moderate,
            "ping": self._ping,
            "leave": self._leave,
            "rollcall": self._rollcall,
            "rollcall_ack": self._rollcall_ack,
            "view": self._view,
        }

    def send(self, message: m.Outgoing) -> None:
        """Queue a message; a client that cannot keep up is disconnected."""
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            logger.warning(
                "client too slow, dropping %s", self.participant and self.participant.identity
            )
            self.outbox = asyncio.Queue(1)
            self._end_outbox()
            return
        if isinstance(message, m.Removed):
            self._end_outbox()

    def _end_outbox(self) -> None:
        """The writer stops after what is queued now (all of it, unless it is full)."""
        try:
            self.outbox.put_nowait(None)
        except asyncio.QueueFull:
            self.outbox = asyncio.Queue(1)
            self.outbox.put_nowait(None)

    def error(self, code: str, message: str, ref: str | None = None) -> None:
        self.send(m.Error(code=code, message=message, ref=ref))

    async def run(self) -> None:
        await self.websocket.accept()
        writer = asyncio.create_task(self._write())
        reader = asyncio.create_task(self._read())
        timeout = self.hub.settings.join_timeout
        deadline = asyncio.get_running_loop().call_later(timeout, self._join_expired, reader)
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not writer.done():
                # The reader ended (leave, refusal, flood, client gone): the client
                # gets what is queued, such as the error saying why, then the close.
                self._end_outbox()
                await asyncio.wait({writer}, timeout=FLUSH_TIMEOUT)
        finally:
            deadline.cancel()
            for task in (writer, reader):
                task.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)
            if self.room is not None and self.participant is not None:
                if self.room.participants.get(self.participant.sid) is self.participant:
                    await self.room.leave(self.participant)
            if self.websocket.application_state != WebSocketState.DISCONNECTED:
                try:
                    await self.websocket.close(self._closing.code, self._closing.reason)
                except RuntimeError:
                    pass

    def _join_expired(self, reader: asyncio.Task[None]) -> None:
        """A socket that has not joined in time holds a place for nothing: close it."""
        if self._joining or reader.done():
            return
        timeout = self.hub.settings.join_timeout
        self.error("join_timeout", f"no join within {timeout:g} s")
        self._closing = _Close(1008, "no join in time")
        reader.cancel()

    async def _write(self) -> None:
        while True:
            message = await self.outbox.get()
            if message is None:
                return
            await self.websocket.send_text(message.to_json())

    async def _read(self) -> None:
        try:
            while True:
                event = await self.websocket.receive()
                if event["type"] == "websocket.disconnect":
                    return
                await self._receive(event.get("text"), event.get("bytes"))
        except _Close as close:
            self._closing = close

    async def _receive(self, text: str | None, data: bytes | None) -> None:
        if text is None:
            self.error("bad_message", "binary frames are not part of the protocol")
            if len(data or b"") > MAX_MESSAGE_BYTES:
                raise _Close(1009, "message too large")
            return
        if len(text) > MAX_MESSAGE_BYTES:
            raise _Close(1009, "message too large")
        if self._over_rate():
            rate = self._messages.rate
            if self._dropped > self._messages.burst:
                self.error("rate_limited", f"kept sending over {rate:g} messages a second")
                raise _Close(1008, "over the message rate")
            self.error("rate_limited", f"over {rate:g} messages a second: dropped")
            return
        await self._handle(text)

    def _over_rate(self) -> bool:
        """Whether this message is over the socket's rate (and so dropped)."""
        if self._messages.full:
            self._dropped = 0
        if self._messages.take():
            return False
        self._dropped += 1
        return True

    async def _handle(self, text: str) -> None:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            self.error("bad_message", "not JSON")
            return
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            self.error("bad_message", "a message is a JSON object with a string 'type'")
            return
        kind = data["type"]
        model = INCOMING.get(kind)
        if model is None:
            self.error("unknown_type", f"unknown message type {kind[:40]!r}", kind[:40])
            return
        try:
            message = model.model_validate(data)
        except ValidationError as exc:
            self.error("bad_message", _describe(exc), kind)
            return
        try:
            if isinstance(message, Join):
                await self._join(message)
            elif self.participant is None:
                self.error("not_joined", "send join first", kind)
                raise _Close
            else:
                await self._handlers[kind](message)
        except HubError as exc:
            self.error(exc.code, exc.message, kind)
            if kind == "join" and self.participant is None:
                raise _Close from None
        except SdpError as exc:
            self.error("bad_sdp", str(exc), kind)
        except _Close:
            raise
        except Exception as exc:
            logger.exception("handling %s failed", kind)
            self.error("internal", f"{type(exc).__name__}", kind)

    # --- handlers ---

    def _joined(self) -> Participant:
        assert self.participant is not None
        return self.participant

    def _in_room(self) -> Room:
        assert self.room is not None
        return self.room

    async def _join(self, message: Join) -> None:
        if self.participant is not None:
            raise HubError("bad_message", "already joined")
        self._joining = True
        grant = self.hub.verify(message.token)
        if message.room is not None and message.room != grant.room:
            raise HubError("wrong_room", f"token is for room {grant.room}, not {message.room}")
        room = await self.hub.room(grant.room)
        client = self.websocket.client
        participant = await room.join(grant, "ws", self.send, client.host if client else None)
        self.room = room
        self.participant = participant
        self.send(
            m.Joined(
                room=room.name,
                participant=participant.info(),
                participants=[
                    p.info()
                    for p in room.participants.values()
                    if p is not participant and room.sees(participant, p)
                ],
                stage=[p.sid for p in room.stage],
                ice_servers=self.hub.ice_servers_for_clients(participant.identity),
                quality=participant.uplink.level,
                microphone=participant.uplink.microphone,
                media=room.media.message_for(participant.grant.can_moderate),
            )
        )
        if participant.grant.can_moderate:
            self.send(room.removed_message())

    async def _offer(self, message: Offer) -> None:
        participant = self._joined()
        if participant.publisher is None:
            raise HubError("forbidden", f"{participant.role.value} may not publish")
        answer = await participant.publisher.on_offer(message.sdp, message.sources)
        self.send(m.PublisherAnswer(sdp=answer))

    async def _answer(self, message: Answer) -> None:
        participant = self._joined()
        if participant.subscriber is None:
            raise HubError("forbidden", "this participant receives nothing")
        await participant.subscriber.on_answer(message.sdp)

    async def _restart_ice(self, message: RestartIce) -> None:
        subscriber = self._joined().subscriber
        if subscriber is None:
            raise HubError("forbidden", "this participant receives nothing")
        await subscriber.restart_ice()

    async def _candidate(self, message: Candidate) -> None:
        participant = self._joined()
        body = message.candidate
        if message.pc == "publisher":
            if participant.publisher is None:
                raise HubError("forbidden", "no publisher connection")
            if body is not None:
                await participant.publisher.add_candidate(
                    body.candidate, body.sdpMid, body.sdpMLineIndex
                )
        # The hub's subscriber side answers from a full candidate list in its offer;
        # the client's trickled candidates there are peer-reflexive to aioice.

    async def _unpublish(self, message: Unpublish) -> None:
        participant = self._joined()
        publication = participant.publication_by_source(message.source)
        if publication is None:
            raise HubError("not_found", f"no {message.source.value} publication")
        participant.unpublish(publication)

    async def _mute(self, message: Mute) -> None:
        self._joined().set_muted(message.source, message.muted, by_moderator=False)

    async def _hand(self, message: Hand) -> None:
        self._in_room().set_hand(self._joined(), message.raised)

    async def _audio_only(self, message: AudioOnly) -> None:
        """A weak link's station: the hub sends it no video at all while on."""
        subscriber = self._joined().subscriber
        if subscriber is None:
            raise HubError("bad_message", "no subscriber connection")
        subscriber.hold_video(message.on)

    async def _video_cap(self, message: VideoCap) -> None:
        """The subscriber's own cap on the layers of simulcast video it receives."""
        subscriber = self._joined().subscriber
        if subscriber is None:
            raise HubError("bad_message", "no subscriber connection")
        subscriber.set_cap(message.cap)

    async def _chat(self, message: Chat) -> None:
        participant = self._joined()
        if not participant.grant.can_chat:
            raise HubError("forbidden", f"{participant.role.value} may not chat")
        if not self._chats.take():
            raise HubError("rate_limited", f"over {self._chats.burst} chat messages a minute")
        self._in_room().broadcast(
            m.ChatOut(
                from_=participant.sid, name=participant.name, text=message.text, at=time.time()
            )
        )

    async def _moderate(self, message: Moderate) -> None:
        participant = self._joined()
        if not participant.grant.can_moderate:
            raise HubError("forbidden", f"{participant.role.value} cannot moderate")
        room = self._in_room()
        if message.action == "readmit":
            if message.identity is None:
                raise HubError("bad_message", "readmit needs identity")
            room.readmit(ParticipantIdentity(message.identity))
            return
        if message.participant is None:
            raise HubError("bad_message", f"{message.action} needs participant")
        target = room.participant(message.participant)
        if message.action == "mute":
            if message.source is None or message.muted is None:
                raise HubError("bad_message", "mute needs source and muted")
            target.set_muted(message.source, message.muted, by_moderator=True)
        elif message.action == "stage":
            if message.on_stage is None:
                raise HubError("bad_message", "stage needs on_stage")
            room.set_stage(target, message.on_stage)
        elif message.action == "hand":
            if message.raised is None:
                raise HubError("bad_message", "hand needs raised")
            room.set_hand(target, message.raised)
        else:
            await room.remove(target)

    async def _rollcall(self, message: RollCallMessage) -> None:
        participant = self._joined()
        if not participant.grant.can_moderate:
            raise HubError("forbidden", f"{participant.role.value} cannot call the roll")
        room = self._in_room()
        if message.action == "start":
            room.start_rollcall(message.seconds, [ParticipantIdentity(i) for i in message.expected])
        else:
            room.stop_rollcall()

    async def _rollcall_ack(self, message: RollCallAck) -> None:
        self._in_room().answer_rollcall(self._joined(), message.id)

    async def _view(self, message: View) -> None:
        participant = self._joined()
        if not participant.grant.can_moderate:
            raise HubError("forbidden", f"{participant.role.value} has no wall of sites")
        limit = self.hub.settings.view_max_tiles
        if len(message.tiles) > limit or len(message.listen) > limit:
            raise HubError("bad_message", f"a view lists at most {limit} tiles and {limit} sites")
        self._in_room().set_view(participant, message.tiles, message.listen)

    async def _ping(self, message: Ping) -> None:
        self.send(m.Pong(id=message.id))

    async def _leave(self, message: Leave) -> None:
        raise _Close


def signaling_router(hub: Hub) -> APIRouter:
    router = APIRouter()
    open_sockets: Counter[str] = Counter()
    """Open websockets by client address."""

    @router.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        address = websocket.client.host if websocket.client else "unknown"
        limit = hub.settings.websockets_per_address
        try:
            if open_sockets[address] >= limit:
                await _refuse(websocket, f"{limit} websockets are open from your address")
                return
            open_sockets[address] += 1
            try:
                await Connection(hub, websocket).run()
            finally:
                open_sockets[address] -= 1
                if not open_sockets[address]:
                    del open_sockets[address]
        except WebSocketDisconnect:
            pass

    return router


async def _refuse(websocket: WebSocket, reason: str) -> None:
    """Say why, then close with 1013 (try again later): ``protocol.js`` retries by itself."""
    await websocket.accept()
    await websocket.send_text(m.Error(code="too_many_connections", message=reason).to_json())
    await websocket.close(1013, "too many connections")
