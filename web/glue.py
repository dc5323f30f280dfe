"""Where the hub meets the schedule and the digital library: the runner's
``RoomControl``, and finished recordings becoming library items."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import HTTPException, Request

from cluster.router import RoomRouter
from cluster.store import Bus, Store
from hub.ids import NodeID, ParticipantIdentity, RoomName
from hub.room_media import MediaError
from hub.service import Hub
from media.jobs import JobRunner
from media.library import Library, Theme
from media.processing import Layout, has_video
from scheduler.accounts import Auth
from scheduler.permissions import Role
from scheduler.recurrence import local
from scheduler.schedule import SessionInfo
from scheduler.sites import Sites

logger = logging.getLogger(__name__)


SESSION_KEY = "recording-session:"
"""Store key prefix: what a room's recording is of (a scheduled session), by room."""
ITEM_KEY = "library-item:"
"""Store key prefix: the newest library item made of a room's recording, by room."""
HANDOVER_TTL = 3 * 24 * 3600.0
"""Seconds these stay: past a session's end and its hand-over, with room for a hub that
was down a while."""
_PART = re.compile(r"^(?P<room>.+)-\d{8}-\d{6}$")
"""A recording directory's name: its room, then when the part began."""


class RecordingsToLibrary:
    """Each ended recording (all its parts) becomes a library item, processed by a job;
    a scheduled session's recording takes its title, theme, host and session id. What
    this remembers (which session a room is, the item made) is in the Store: a hub that
    restarts between the recording and the hand-over still hands it over."""

    def __init__(self, library: Library, jobs: JobRunner, store: Store) -> None:
        self.library = library
        self.jobs = jobs
        self.store = store

    async def remember(self, room: str, session: SessionInfo) -> None:
        """``room`` records ``session``: its recordings take the session's metadata."""
        meta = {
            "title": session.title,
            "theme": session.theme.value,
            "date": local(session.start).date().isoformat(),
            "site": session.host,
            "session_id": str(session.session_id),
            "layout": session.options.layout,
        }
        await self.store.put(SESSION_KEY + room, meta, HANDOVER_TTL)

    async def recorded(self, room: str, parts: list[Path]) -> None:
        meta = await self.store.get(SESSION_KEY + room)
        if meta is not None:
            item = await self.library.create(
                title=meta["title"],
                theme=Theme(meta["theme"]),
                date=datetime.date.fromisoformat(meta["date"]),
                site=meta["site"],
                session_id=meta["session_id"],
            )
        else:
            today = datetime.date.today()
            item = await self.library.create(
                title=f"{room} {today.isoformat()}", theme=Theme.THEORY, date=today
            )
        await self.store.put(ITEM_KEY + room, {"item": item.id}, HANDOVER_TTL)
        layout: Layout = (
            "composite" if meta is not None and meta["layout"] == "composite" else "lecturer"
        )
        job = await self.jobs.submit(item.id, "recording", parts, layout)
        logger.info("recording %s of %s → item %s, job %s", parts, room, item.id, job.id)

    async def latest_item(self, room: str) -> str | None:
        """The id of the newest item made of ``room``'s recording, if any."""
        found = await self.store.get(ITEM_KEY + room)
        return None if found is None else str(found["item"])

    async def hand_over(self, room: str, publish: bool) -> bool:
        """The schedule's hand-over: publish (or not) the item of ``room``'s recording;
        False when there was none."""
        item = await self.latest_item(room)
        if item is None:
            return False
        await self.library.update(item, {"published": publish})
        await self.store.delete(SESSION_KEY + room)
        return True

    async def recover(self, recordings_dir: Path, in_progress: set[str]) -> int:
        """Recordings a crash cut off that no room goes on with (it was not restored)
        go to the library as they would have: one item per room, its parts joined in
        order. A directory a job already has, or a room (on any node) still records
        into, is left alone. How many items were made."""
        taken = await self.jobs.recording_sources()
        found = await asyncio.to_thread(_untaken_parts, recordings_dir, taken, in_progress)
        for room, parts in found.items():
            logger.warning("recording of %s cut off by a stop: %s → library", room, parts)
            await self.recorded(room, parts)
        return len(found)


def _untaken_parts(
    recordings_dir: Path, taken: set[Path], in_progress: set[str]
) -> dict[str, list[Path]]:
    """The recording directories neither ``taken`` nor ``in_progress``, by room, in
    order. Blocking."""
    taken = taken | {Path(p).resolve() for p in in_progress}
    found: dict[str, list[Path]] = {}
    if recordings_dir.is_dir():
        for directory in sorted(recordings_dir.iterdir()):
            match = _PART.match(directory.name)
            if match and directory.is_dir() and directory.resolve() not in taken:
                if has_video(directory):  # a recording nobody published in is none
                    found.setdefault(match["room"], []).append(directory)
    return found


class HubRoomControl:
    """The schedule runner's hands on the hub. Every action is safe to repeat: a
    runner that restarted mid-step may do one again."""

    def __init__(self, hub: Hub, recordings: RecordingsToLibrary, sites: Sites) -> None:
        self.hub = hub
        self.recordings = recordings
        self.sites = sites

    async def open_room(self, room: str, session: SessionInfo) -> None:
        await self.recordings.remember(room, session)
        opened = await self.hub.room(RoomName(room))
        tree = await self.sites.tree()
        opened.audience = {
            ParticipantIdentity(code): tree.get(code).name
            for code in sorted(session.audience_sites - {session.host})
            if code in tree
        }
        media = opened.media
        if session.options.live_households and media.live is None:
            media.start_live()
        if media.restreamer is None:  # not started by an earlier attempt at this step
            for url in session.options.restream_urls:
                try:
                    media.add_restream(url)
                except MediaError as exc:
                    logger.error("session %s: restream refused: %s", session.session_id, exc)

    async def start_recording(self, room: str) -> None:
        opened = await self.hub.room(RoomName(room))
        if opened.media.recorder is None:
            opened.media.start_recording()

    async def stop_recording(self, room: str) -> None:
        opened = self.hub.rooms.get(RoomName(room))
        if opened is not None and opened.media.recorder is not None:
            await opened.media.stop_recording()

    async def close_room(self, room: str) -> None:
        await self.hub.close_room(RoomName(room))

    async def hand_to_library(self, room: str, session: SessionInfo) -> None:
        if not await self.recordings.hand_over(room, session.options.publish):
            logger.warning("session %s: no recording of %s to publish", session.session_id, room)


CONTROL_CHANNEL = "room-control:"
"""Bus channel prefix: the schedule's room actions for one node, by node id."""
REPLY_CHANNEL = "room-control-reply:"
"""Bus channel prefix: the answer to one action, by request id."""
CONTROL_TIMEOUT = 15.0
"""Seconds an action asked of another node may take; the runner retries a step that
failed (every action is safe to repeat)."""


class RoutedRoomControl:
    """The schedule runner's hands in a cluster: each action runs on the node holding
    the room, asked over the Bus; a room held by nobody is opened on this node (the
    claim is atomic). In one process every room is here."""

    def __init__(self, local: HubRoomControl, router: RoomRouter, bus: Bus, node: NodeID) -> None:
        self.local = local
        self.router = router
        self.bus = bus
        self.node = node

    async def open_room(self, room: str, session: SessionInfo) -> None:
        await self._act("open_room", room, session)

    async def start_recording(self, room: str) -> None:
        await self._act("start_recording", room)

    async def stop_recording(self, room: str) -> None:
        await self._act("stop_recording", room)

    async def close_room(self, room: str) -> None:
        await self._act("close_room", room)

    async def hand_to_library(self, room: str, session: SessionInfo) -> None:
        await self._act("hand_to_library", room, session)

    async def _act(self, action: str, room: str, session: SessionInfo | None = None) -> None:
        owner = await self.router.elsewhere(RoomName(room))
        if owner is None:
            await self._here(action, room, session)
            return
        node, _ = owner
        request = secrets.token_hex(8)
        async with self.bus.subscribe(REPLY_CHANNEL + request) as replies:
            await self.bus.publish(
                CONTROL_CHANNEL + node,
                {
                    "id": request,
                    "action": action,
                    "room": room,
                    "session": None if session is None else session.to_message(),
                },
            )
            async with asyncio.timeout(CONTROL_TIMEOUT):
                reply = await anext(replies)
        if reply.get("error"):
            raise RuntimeError(f"{action} of room {room} on node {node}: {reply['error']}")

    async def _here(self, action: str, room: str, session: SessionInfo | None) -> None:
        local = self.local
        match action:
            case "open_room" if session is not None:
                await local.open_room(room, session)
            case "start_recording":
                await local.start_recording(room)
            case "stop_recording":
                await local.stop_recording(room)
            case "close_room":
                await local.close_room(room)
            case "hand_to_library" if session is not None:
                await local.hand_to_library(room, session)
            case _:
                raise ValueError(f"no room action {action!r}")

    async def serve(self) -> None:
        """Do what other nodes' runners ask of this node's rooms, until cancelled."""
        async with self.bus.subscribe(CONTROL_CHANNEL + self.node) as requests:
            async for request in requests:
                error = None
                try:
                    session = request.get("session")
                    await self._here(
                        str(request["action"]),
                        str(request["room"]),
                        None if session is None else SessionInfo.from_message(session),
                    )
                except Exception as exc:
                    logger.exception("room action %s asked by another node failed", request)
                    error = f"{type(exc).__name__}: {exc}"
                await self.bus.publish(REPLY_CHANNEL + str(request.get("id")), {"error": error})


def admin_check(auth: Auth) -> Callable[[Request], Awaitable[bool]]:
    """The library's ``is_admin``: a logged-in center administrator. Not logged in is
    just not an administrator; a login that fails its CSRF check is refused as such."""

    async def is_admin(request: Request) -> bool:
        try:
            account = await auth.current_account(request)
        except HTTPException as exc:
            if exc.status_code == 401:
                return False
            raise
        return account.role == Role.CENTER_ADMIN

    return is_admin
