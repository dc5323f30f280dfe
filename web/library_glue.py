"""Where the hub's finished recordings enter the digital library."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import HTTPException, Request

from media.jobs import JobRunner
from media.library import Library, LibraryItem, Theme
from scheduler.accounts import Auth
from scheduler.permissions import Role

logger = logging.getLogger(__name__)


class RecordingsToLibrary:
    """Each ended recording becomes an unpublished library item, processed by a job;
    a scheduled session then gives it its title and theme (``describe``)."""

    def __init__(self, library: Library, jobs: JobRunner) -> None:
        self.library = library
        self.jobs = jobs
        self.latest: dict[str, LibraryItem] = {}
        """The newest item of each room, for the schedule's hand-over."""

    async def recorded(self, room: str, directory: Path) -> None:
        today = datetime.date.today()
        item = await self.library.create(
            title=f"{room} {today.isoformat()}",
            theme=Theme.THEORY,
            date=today,
            description="",
        )
        self.latest[room] = item
        job = await self.jobs.submit(item.id, "recording", directory)
        logger.info(
            "recording %s of %s → library item %s (job %s)", directory, room, item.id, job.id
        )


def admin_check(auth: Auth) -> Callable[[Request], Awaitable[bool]]:
    """The library's ``is_admin``: a logged-in center administrator."""

    async def is_admin(request: Request) -> bool:
        try:
            account = await auth.current_account(request)
        except HTTPException:
            return False
        return account.role == Role.CENTER_ADMIN

    return is_admin
