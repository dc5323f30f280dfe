"""WHIP ingest and WHEP playback: one HTTP POST of an SDP offer, one DELETE to end."""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError

from hub.errors import HubError
from hub.ids import ParticipantIdentity, RoomName
from hub.limits import AddressBuckets
from hub.messages import MAX_SDP_BYTES, VideoCapPatch
from hub.peers import SdpError, parse_sdp
from hub.room import Participant, ParticipantKind, Room
from hub.service import RESOURCE_KEY, Hub
from hub.tokens import Grant, Role, Source, grant_for_role
from hub.turn import link_headers

logger = logging.getLogger(__name__)

_STATUS = {
    "invalid_token": 401,
    "token_expired": 401,
    "wrong_room": 403,
    "forbidden": 403,
    "removed": 403,
    "not_found": 404,
    "room_closed": 404,
    "room_elsewhere": 409,
    "room_full": 503,
    "bad_sdp": 400,
    "bad_message": 400,
}
ANONYMOUS_VIEW_TTL = 12 * 3600


def _problem(status: int, reason: str, retry_after: float | None = None) -> PlainTextResponse:
    headers = None if retry_after is None else {"Retry-After": str(max(1, math.ceil(retry_after)))}
    return PlainTextResponse(reason, status_code=status, headers=headers)


async def _read_offer(request: Request) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/sdp":
        raise _HttpError(415, "Content-Type must be application/sdp")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_SDP_BYTES:
        raise _HttpError(413, f"SDP larger than {MAX_SDP_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SDP_BYTES:
            raise _HttpError(413, f"SDP larger than {MAX_SDP_BYTES} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise _HttpError(400, "SDP is not UTF-8") from None


class _HttpError(Exception):
    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _HttpError(401, "Authorization must be 'Bearer <token>'")
    return token.strip()


@dataclass(frozen=True)
class _Resource:
    """A WHIP or WHEP session, known by the secret in its ``Location``."""

    room: Room
    participant: Participant
    with_token: bool
    """Opened with a token: ending it needs a token of the same identity."""


def whip_router(hub: Hub) -> APIRouter:
    """The sessions are in the Store (:data:`hub.service.RESOURCE_KEY`, by the secret
    in their URL, never the sid every participant and the room API see)."""
    router = APIRouter()
    settings = hub.settings
    anonymous_views = AddressBuckets(
        settings.anonymous_whep_per_minute / 60, settings.anonymous_whep_per_minute
    )

    async def created(
        room: Room, participant: Participant, kind: ParticipantKind, answer: str, with_token: bool
    ) -> Response:
        key = secrets.token_urlsafe(24)
        participant.resource = key
        participant.resource_needs_token = with_token
        await hub.save_resource(participant)
        response = Response(
            answer,
            status_code=201,
            media_type="application/sdp",
            headers={"Location": f"/{kind}/{room.name}/{key}"},
        )
        for link in link_headers(hub.ice_servers_for_clients(participant.identity)):
            response.headers.append("Link", link)
        return response

    async def guarded(
        kind: ParticipantKind,
        room_name: str,
        request: Request,
        grant_of: Callable[[str | None, RoomName], Awaitable[Grant]],
    ) -> Response:
        try:
            offer = await _read_offer(request)
            parse_sdp(offer, settings.max_media_per_offer)
            token = _bearer(request)
            grant = await grant_of(token, RoomName(room_name))
            address = request.client.host if request.client else "unknown"
            if kind == "whep":
                admit_viewer(address, grant, anonymous=token is None)
            room = await hub.room(RoomName(room_name))
            participant = await room.join(grant, kind, lambda message: None, address)
            try:
                if kind == "whip":
                    assert participant.publisher is not None
                    answer = await participant.publisher.on_offer(offer, _whip_sources(offer))
                else:
                    assert participant.whep is not None
                    answer = await participant.whep.on_offer(offer, room)
            except BaseException:
                await room.leave(participant)
                raise
            return await created(room, participant, kind, answer, token is not None)
        except _HttpError as exc:
            return _problem(exc.status, exc.reason, exc.retry_after)
        except SdpError as exc:
            return _problem(400, f"bad SDP: {exc}")
        except HubError as exc:
            # A full room frees places as sessions that never connected time out.
            wait = settings.peer_connect_timeout if exc.code == "room_full" else None
            return _problem(_STATUS.get(exc.code, 400), exc.message, wait)

    def admit_viewer(address: str, grant: Grant, anonymous: bool) -> None:
        """Per address: so many open WHEP sessions, and so many new anonymous ones a
        minute (a viewer with a token is held by its identity: one session each)."""
        open_here = sum(
            1
            for room in hub.rooms.values()
            for p in room.participants.values()
            if p.kind == "whep" and p.address == address and p.identity != grant.identity
        )
        if open_here >= settings.whep_per_address:
            raise _HttpError(
                429,
                f"{open_here} WHEP sessions are open from your address, the most it may have",
                settings.peer_connect_timeout,
            )
        if anonymous:
            wait = anonymous_views.take(address)
            if wait is not None:
                raise _HttpError(429, "too many new viewers from your address; wait", wait)

    def verified(token: str, room: RoomName) -> Grant:
        grant = hub.verify(token)
        if grant.room != room:
            raise HubError("wrong_room", f"token is for room {grant.room}, not {room}")
        return grant

    async def whip_grant(token: str | None, room: RoomName) -> Grant:
        if token is None:
            raise _HttpError(401, "WHIP needs Authorization: Bearer <token>")
        grant = verified(token, room)
        if not grant.can_publish:
            raise HubError("forbidden", f"{grant.role.value} may not publish")
        return grant

    async def whep_grant(token: str | None, room: RoomName) -> Grant:
        if token is None:
            existing = hub.rooms.get(room)
            if existing is None or not existing.public:
                raise _HttpError(401, "this room is not open to anonymous viewers; send a token")
            return grant_for_role(
                room,
                ParticipantIdentity(f"household-{time.monotonic_ns()}"),
                Role.VIEWER,
                ttl=ANONYMOUS_VIEW_TTL,
                name="household",
            )
        grant = verified(token, room)
        if not grant.can_subscribe:
            raise HubError("forbidden", f"{grant.role.value} may not watch")
        return grant

    @router.post("/whip/{room}")
    async def whip(room: str, request: Request) -> Response:
        return await guarded("whip", room, request, whip_grant)

    @router.post("/whep/{room}")
    async def whep(room: str, request: Request) -> Response:
        return await guarded("whep", room, request, whep_grant)

    async def owned(kind: ParticipantKind, room: str, key: str, request: Request) -> _Resource:
        """The session at this URL, if the request may act on it: a session opened
        with a token needs a token of the same identity; an anonymous household's
        is ended by its secret URL alone."""
        doc = await hub.store.get(RESOURCE_KEY + key)
        here = hub.rooms.get(RoomName(room))
        participant = here.participants.get(doc["participant"]) if doc and here else None
        if doc is None or here is None or participant is None or doc.get("kind") != kind:
            raise _HttpError(404, "no such resource")
        found = _Resource(here, participant, bool(doc.get("with_token")))
        if not found.with_token:
            return found
        token = _bearer(request)
        if token is None:
            raise _HttpError(401, "this session was opened with a token: send it as Bearer")
        try:
            grant = hub.verify(token)
        except HubError as exc:
            raise _HttpError(401, exc.message) from None
        identity = found.participant.identity
        if grant.room != found.room.name or grant.identity != identity:
            raise _HttpError(403, f"this session belongs to {identity}, not {grant.identity}")
        return found

    async def delete(kind: ParticipantKind, room: str, key: str, request: Request) -> Response:
        try:
            found = await owned(kind, room, key, request)
        except _HttpError as exc:
            return _problem(exc.status, exc.reason)
        await found.room.leave(found.participant)
        return Response(status_code=204)

    async def trickle(kind: ParticipantKind, room: str, key: str, request: Request) -> Response:
        try:
            found = await owned(kind, room, key, request)
        except _HttpError as exc:
            return _problem(exc.status, exc.reason)
        if kind == "whep" and request.headers.get("content-type", "").startswith(
            "application/json"
        ):
            return await video_cap(found, request)
        # The hub's answer carries all its candidates; trickle is not needed.
        return _problem(405, "trickle ICE is not supported; all candidates are in the SDP")

    async def video_cap(found: _Resource, request: Request) -> Response:
        """A WHEP viewer's own cap on simulcast layers (``video_cap`` of PROTOCOL.md)."""
        try:
            body = VideoCapPatch.model_validate_json(await request.body())
        except ValidationError as exc:
            return _problem(400, f"bad video_cap: {exc.errors()[0]['msg']}")
        assert found.participant.whep is not None
        found.participant.whep.set_cap(body.video_cap)
        return Response(status_code=204)

    @router.delete("/whip/{room}/{resource}")
    async def whip_delete(room: str, resource: str, request: Request) -> Response:
        return await delete("whip", room, resource, request)

    @router.delete("/whep/{room}/{resource}")
    async def whep_delete(room: str, resource: str, request: Request) -> Response:
        return await delete("whep", room, resource, request)

    @router.patch("/whip/{room}/{resource}")
    async def whip_trickle(room: str, resource: str, request: Request) -> Response:
        return await trickle("whip", room, resource, request)

    @router.patch("/whep/{room}/{resource}")
    async def whep_trickle(room: str, resource: str, request: Request) -> Response:
        return await trickle("whep", room, resource, request)

    return router


def _whip_sources(offer: str) -> dict[str, Source]:
    """WHIP has no source map: the first video is the camera, a second the screen."""
    sources: dict[str, Source] = {}
    videos = [Source.CAMERA, Source.SCREEN]
    for media in parse_sdp(offer):
        if media.direction not in ("sendonly", "sendrecv"):
            continue
        if media.kind == "audio" and Source.MICROPHONE not in sources.values():
            sources[media.mid] = Source.MICROPHONE
        elif media.kind == "video" and videos:
            sources[media.mid] = videos.pop(0)
    return sources
