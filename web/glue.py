"""Where the hub meets the schedule and the digital library: the runner's
``RoomControl``, and finished recordings becoming library items."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import HTTPException, Request

from hub.ids import ParticipantIdentity, RoomName
from hub.room_media import MediaError
from hub.service import Hub
from media.jobs import JobRunner
from media.library import Library, LibraryItem, Theme
from scheduler.accounts import Auth
from scheduler.permissions import Role
from scheduler.recurrence import local
from scheduler.schedule import SessionInfo
from scheduler.sites import Sites

logger = logging.getLogger(__name__)


class RecordingsToLibrary:
    """Each ended recording becomes a library item, processed by a job; a scheduled
    session's recording takes its title, theme, host and session id."""

    def __init__(self, library: Library, jobs: JobRunner) -> None:
        self.library = library
        self.jobs = jobs
        self.sessions: dict[str, SessionInfo] = {}
        """The scheduled session each open room belongs to."""
        self.latest: dict[str, LibraryItem] = {}
        """The newest item of each room, for the schedule's hand-over."""

    async def recorded(self, room: str, directory: Path) -> None:
        session = self.sessions.get(room)
        if session is not None:
            item = await self.library.create(
                title=session.title,
                theme=Theme(session.theme),
                date=local(session.start).date(),
                site=session.host,
                session_id=str(session.session_id),
            )
        else:
            today = datetime.date.today()
            item = await self.library.create(
                title=f"{room} {today.isoformat()}", theme=Theme.THEORY, date=today
            )
        self.latest[room] = item
        layout = session.options.layout if session is not None else "lecturer"
        job = await self.jobs.submit(item.id, "recording", directory, layout)
        logger.info("recording %s of %s → item %s, job %s", directory, room, item.id, job.id)


class HubRoomControl:
    """The schedule runner's hands on the hub. Every action is safe to repeat: a
    runner that restarted mid-step may do one again."""

    def __init__(self, hub: Hub, recordings: RecordingsToLibrary, sites: Sites) -> None:
        self.hub = hub
        self.recordings = recordings
        self.sites = sites

    async def open_room(self, room: str, session: SessionInfo) -> None:
        self.recordings.sessions[room] = session
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
        item = self.recordings.latest.get(room)
        if item is None:
            logger.warning("session %s: no recording of %s to publish", session.session_id, room)
            return
        await self.recordings.library.update(item.id, {"published": session.options.publish})
        self.recordings.sessions.pop(room, None)


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
