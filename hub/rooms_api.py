"""``/api/rooms``: open, inspect, open to households and close rooms."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path
from pydantic import BaseModel, ConfigDict, StringConstraints

from hub.errors import HubError
from hub.ids import ROOM_NAME_PATTERN, RoomName
from hub.room import Room
from hub.room_media import MediaError
from hub.service import Hub
from hub.tokens import Grant

RoomPath = Annotated[str, Path(pattern=ROOM_NAME_PATTERN)]


class RoomPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    public: bool | None = None
    """Households may watch without an account."""


class RestreamBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    url: Annotated[str, StringConstraints(max_length=2048)]


def household_info(room: Room) -> dict[str, Any]:
    """What anyone may know of a room: what the household page needs to play it, and
    whether it is recorded (households are told, as everyone in the room is)."""
    media = room.media.public_status()
    return {
        "name": room.name,
        "public": room.public,
        "recording": media["recording"],
        "live": media["live"],
        "hls_url": media["hls_url"],
    }


def room_info(room: Room) -> dict[str, Any]:
    """The whole room, for its moderators: who is in it, hands, media and errors."""
    media = room.media.status()
    return {
        **household_info(room),
        "created_at": room.created_at,
        "participants": len(room.participants),
        "stage": [{"sid": p.sid, "identity": p.identity, "name": p.name} for p in room.stage],
        "hands": [p.sid for p in room.hands()],
        "media": media,
        "household_viewers": room.media.household_viewers(),
    }


def rooms_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api/rooms", tags=["rooms"])

    def bearer(authorization: Annotated[str | None, Header()] = None) -> Grant | None:
        """The grant of the token sent, if any; 401 for one that is not valid."""
        if authorization is None:
            return None
        if not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "send Authorization: Bearer <moderator token>")
        try:
            return hub.verify(authorization[7:].strip())
        except HubError as exc:
            raise HTTPException(401, exc.message) from None

    def moderator(grant: Annotated[Grant | None, Depends(bearer)]) -> Grant:
        if grant is None:
            raise HTTPException(401, "send Authorization: Bearer <moderator token>")
        if not grant.can_moderate:
            raise HTTPException(403, f"{grant.role.value} cannot manage rooms")
        return grant

    ModeratorDep = Annotated[Grant, Depends(moderator)]

    def own(grant: Grant, name: str) -> RoomName:
        if grant.room != name:
            raise HTTPException(403, f"token is for room {grant.room}, not {name}")
        return RoomName(name)

    async def existing(name: str) -> Room:
        room = hub.rooms.get(RoomName(name))
        if room is None:
            raise HTTPException(404, f"no room {name} on this node")
        return room

    @router.get("/{name}")
    async def get_room(
        name: RoomPath, grant: Annotated[Grant | None, Depends(bearer)]
    ) -> dict[str, Any]:
        """Anyone: the household view; a moderator of this room: the whole room."""
        room = await existing(name)
        if grant is not None and grant.can_moderate and grant.room == name:
            return room_info(room)
        return household_info(room)

    @router.post("/{name}", status_code=201)
    async def open_room(name: RoomPath, grant: ModeratorDep) -> dict[str, Any]:
        try:
            room = await hub.room(own(grant, name))
        except HubError as exc:
            raise HTTPException(409, exc.message) from None
        return room_info(room)

    @router.patch("/{name}")
    async def patch_room(name: RoomPath, patch: RoomPatch, grant: ModeratorDep) -> dict[str, Any]:
        own(grant, name)
        room = await existing(name)
        if patch.public is not None:
            room.public = patch.public
        return room_info(room)

    async def media_action(
        name: str, grant: Grant, action: Callable[[Room], Awaitable[Any]]
    ) -> dict[str, Any]:
        own(grant, name)
        room = await existing(name)
        try:
            await action(room)
        except MediaError as exc:
            raise HTTPException(409, str(exc)) from None
        return room.media.status()

    async def start_recording(room: Room) -> None:
        room.media.start_recording()

    async def start_live(room: Room) -> None:
        room.media.start_live()

    @router.post("/{name}/recording", status_code=201)
    async def record(name: RoomPath, grant: ModeratorDep) -> dict[str, Any]:
        return await media_action(name, grant, start_recording)

    @router.delete("/{name}/recording")
    async def stop_recording(name: RoomPath, grant: ModeratorDep) -> dict[str, Any]:
        return await media_action(name, grant, lambda room: room.media.stop_recording())

    @router.post("/{name}/live", status_code=201)
    async def live(name: RoomPath, grant: ModeratorDep) -> dict[str, Any]:
        return await media_action(name, grant, start_live)

    @router.delete("/{name}/live")
    async def stop_live(name: RoomPath, grant: ModeratorDep) -> dict[str, Any]:
        return await media_action(name, grant, lambda room: room.media.stop_live())

    @router.post("/{name}/restreams", status_code=201)
    async def restream(name: RoomPath, body: RestreamBody, grant: ModeratorDep) -> dict[str, Any]:
        async def add(room: Room) -> None:
            room.media.add_restream(body.url)

        return await media_action(name, grant, add)

    @router.delete("/{name}/restreams/{target}")
    async def stop_restream(name: RoomPath, target: str, grant: ModeratorDep) -> dict[str, Any]:
        return await media_action(name, grant, lambda room: room.media.remove_restream(target))

    @router.delete("/{name}", status_code=204)
    async def close_room(name: RoomPath, grant: ModeratorDep) -> None:
        if not await hub.close_room(own(grant, name)):
            raise HTTPException(404, f"no room {name} on this node")

    return router
