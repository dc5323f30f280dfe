"""The live state of every site for the command dashboard, and its fan-out.

Joins and leaves arrive on the Bus (``presence``) and are applied at once; link
quality comes from the Store's presence entries, re-read every few seconds (which
also repairs anything a lost message left wrong). Changes are batched: listeners get
at most one ``sites`` update per ``batch`` seconds, listing only the sites that
changed, so several hundred sites cost the browser a handful of row updates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.store import Bus, Store
from scheduler.attendance import PRESENCE_CHANNEL, parse_room
from scheduler.command import DIRECTIVES_CHANNEL
from scheduler.notices import STREAMS_CHANNEL, merged
from scheduler.schedule import Schedule
from scheduler.sites import Sites, SiteTree

logger = logging.getLogger(__name__)

SPEAKERS_CHANNEL = "speakers"


@dataclass
class SiteState:
    rooms: set[str] = field(default_factory=set)
    streams: set[str] = field(default_factory=set)
    """Open notice streams (``node/stream``)."""
    link: dict[str, Any] | None = None
    speaking: bool = False

    @property
    def online(self) -> bool:
        return bool(self.rooms or self.streams)


@dataclass(eq=False)
class Listener:
    visible: set[str] | None
    """The sites it may see (None: all)."""
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


class Dashboard:
    """``await start()`` loads a first snapshot and listens; ``stop()`` ends its tasks."""

    def __init__(
        self,
        engine: AsyncEngine,
        store: Store,
        bus: Bus,
        refresh: float = 5.0,
        batch: float = 0.2,
    ) -> None:
        self._sites = Sites(engine)
        self._schedule = Schedule(engine)
        self._store = store
        self._bus = bus
        self._refresh = refresh
        self._batch = batch
        self.tree = SiteTree([])
        self.states: dict[str, SiteState] = {}
        self.titles: dict[str, str] = {}
        self._speakers: dict[str, set[str]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._listeners: set[Listener] = set()
        self._looked_up: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self._tasks:
            return
        await self._load()
        await self.refresh()
        self._dirty.clear()
        listening = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._consume(listening), name="dashboard-bus"),
            asyncio.create_task(self._refresh_loop(), name="dashboard-refresh"),
            asyncio.create_task(self._flush_loop(), name="dashboard-flush"),
        ]
        await asyncio.wait({self._tasks[0], listening}, return_when=asyncio.FIRST_COMPLETED)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- state ---

    def site_json(self, code: str) -> dict[str, Any]:
        state = self.states.get(code) or SiteState()
        room = min(state.rooms) if state.rooms else None
        return {
            "code": code,
            "online": state.online,
            "room": room,
            "session": self.titles.get(room) if room else None,
            "link": state.link,
            "speaking": state.speaking,
        }

    def snapshot(self, visible: set[str] | None) -> dict[str, Any]:
        """The tree and every visible site's state."""
        sites = [s for s in self.tree.all() if visible is None or s.code in visible]
        return {
            "type": "snapshot",
            "sites": [
                {
                    **self.site_json(s.code),
                    "name": s.name,
                    "kind": s.kind.value,
                    "parent": s.parent,
                    "region": s.region,
                }
                for s in sites
            ],
        }

    def _mark(self, code: str) -> None:
        self._dirty.add(code)
        self._wake.set()

    async def _load(self) -> None:
        """The tree, and the titles of the sessions around today."""
        self.tree = await self._sites.tree()
        for site in self.tree.all():
            self.states.setdefault(site.code, SiteState())
        now = datetime.now(UTC)
        infos = await self._schedule.overlapping(
            self.tree, now - timedelta(days=1), now + timedelta(days=1)
        )
        self.titles.update({info.room: info.title for info in infos})

    def _mark_room(self, room: str) -> None:
        for code, state in self.states.items():
            if room in state.rooms:
                self._mark(code)

    async def refresh(self) -> None:
        """Re-read every room's presence from the Store (rooms, link quality)."""
        rooms: dict[str, set[str]] = {}
        links: dict[str, dict[str, Any]] = {}
        for room in await self._store.rooms():
            for identity, info in (await self._store.presence(room)).items():
                rooms.setdefault(identity, set()).add(room)
                links[identity] = info.get("link") or {}
        for code, state in self.states.items():
            new_rooms = rooms.get(code, set())
            link = links.get(code)
            if state.rooms != new_rooms or state.link != link:
                state.rooms, state.link = new_rooms, link
                self._mark(code)

    def apply(self, channel: str, message: dict[str, Any]) -> None:
        """One Bus message."""
        if channel == PRESENCE_CHANNEL:
            code, room = str(message.get("identity")), str(message.get("room"))
            state = self.states.get(code)
            if state is None:
                return  # not a site: a person, an ingest, a household viewer
            if message.get("here"):
                state.rooms.add(room)
            else:
                state.rooms.discard(room)
            self._mark(code)
        elif channel == SPEAKERS_CHANNEL:
            room = str(message.get("room"))
            now = {str(s) for s in message.get("speakers", [])}
            before = self._speakers.pop(room, set())
            if now:
                self._speakers[room] = now
            for code in (before ^ now) & self.states.keys():
                self.states[code].speaking = code in now
                self._mark(code)
        elif channel == STREAMS_CHANNEL:
            code = str(message.get("site"))
            key = f"{message.get('node')}/{message.get('stream')}"
            if code not in self.states:
                return
            if message.get("open"):
                self.states[code].streams.add(key)
            else:
                self.states[code].streams.discard(key)
            self._mark(code)
        elif channel == DIRECTIVES_CHANNEL:
            for listener in self._listeners:
                if self._concerns(message, listener.visible):
                    listener.queue.put_nowait(message)

    @staticmethod
    def _concerns(message: dict[str, Any], visible: set[str] | None) -> bool:
        if visible is None:
            return True
        sites = {message.get("site"), *message.get("read", {}), *message.get("unread", [])}
        return bool(sites & visible)

    # --- tasks ---

    async def _consume(self, listening: asyncio.Future[None]) -> None:
        channels = (PRESENCE_CHANNEL, SPEAKERS_CHANNEL, STREAMS_CHANNEL, DIRECTIVES_CHANNEL)
        async for channel, message in merged(
            self._bus, channels, lambda: listening.set_result(None)
        ):
            self.apply(channel, message)
            room = message.get("room")
            if isinstance(room, str) and room not in self._looked_up:
                self._looked_up.add(room)
                if room not in self.titles and parse_room(room) is not None:
                    # A session scheduled since the last load: look once per room.
                    await self._load()
                    self._mark_room(room)

    async def _refresh_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self._refresh)
            ticks += 1
            try:
                if ticks % 12 == 0:
                    await self._load()
                await self.refresh()
            except Exception:
                logger.exception("dashboard refresh failed")

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._batch)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            if not dirty:
                continue
            changes = {code: self.site_json(code) for code in dirty}
            for listener in self._listeners:
                visible = listener.visible
                shown = [v for c, v in changes.items() if visible is None or c in visible]
                if shown:
                    listener.queue.put_nowait({"type": "sites", "sites": shown})

    @contextlib.asynccontextmanager
    async def listen(self, visible: set[str] | None) -> AsyncIterator[Listener]:
        """A listener whose queue receives batched changes until the block ends."""
        listener = Listener(visible)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)
