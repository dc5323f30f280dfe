"""Attendance: who was expected at an occurrence, who joined, when, for how long, and
who answered roll call. Recorded from the hub's Bus channels ``presence`` and
``rollcall`` into SQL, so it survives restarts and is shared by a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.store import Bus
from scheduler.command_tables import household_viewers, presence_intervals, rollcall_answers
from scheduler.notices import merged
from scheduler.recurrence import LOCAL_ZONE, local, occurrences
from scheduler.schedule import Schedule, Session, SessionInfo, occurrence_info, room_name
from scheduler.sites import SiteTree

logger = logging.getLogger(__name__)

PRESENCE_CHANNEL = "presence"
ROLLCALL_CHANNEL = "rollcall"
VIEWERS_CHANNEL = "viewers"
_ROOM = re.compile(r"^s(\d+)-(\d{12})$")


def parse_room(room: str) -> tuple[int, datetime] | None:
    """The (session id, occurrence start in UTC) a room name stands for, or None for a
    room that is not a scheduled session's (the inverse of ``room_name``)."""
    match = _ROOM.match(room)
    if match is None:
        return None
    try:
        wall = datetime.strptime(match.group(2), "%Y%m%d%H%M")
    except ValueError:
        return None
    return int(match.group(1)), wall.replace(tzinfo=LOCAL_ZONE).astimezone(UTC)


async def find_occurrence(schedule: Schedule, tree: SiteTree, room: str) -> SessionInfo | None:
    """The occurrence whose room is ``room`` (None if no session has it)."""
    parsed = parse_room(room)
    if parsed is None:
        return None
    session_id, start = parsed
    try:
        session = await schedule.get(session_id)
    except KeyError:
        return None
    return occurrence_of(session, tree, start)


def occurrence_of(session: Session, tree: SiteTree, start: datetime) -> SessionInfo | None:
    # Room names have minute precision: look within that minute.
    window = occurrences(
        session.start, session.end, session.recurrence, start, start + timedelta(minutes=1)
    )
    for occurrence in window:
        if room_name(session.id, occurrence.start) == room_name(session.id, start):
            return occurrence_info(session, occurrence, frozenset(session.audience.sites(tree)))
    return None


def _instant(message: dict[str, Any]) -> datetime:
    at = message.get("at")
    return datetime.fromtimestamp(at, UTC) if isinstance(at, int | float) else datetime.now(UTC)


class AttendanceRecorder:
    """Writes joins, leaves and roll-call answers of session rooms as they happen.

    ``await start()`` returns once it listens; ``stop()`` cancels and awaits its task.
    With ``node`` set, only that node's messages are recorded: in a cluster every node
    hears every message, and each records the rooms it holds."""

    def __init__(self, engine: AsyncEngine, bus: Bus, node: str | None = None) -> None:
        self._engine = engine
        self._bus = bus
        self._node = node
        self._schedule = Schedule(engine)
        self._sessions: dict[int, bool] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        listening = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(listening), name="attendance-recorder")
        await asyncio.wait({self._task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            self._task.result()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, listening: asyncio.Future[None]) -> None:
        channels = (PRESENCE_CHANNEL, ROLLCALL_CHANNEL, VIEWERS_CHANNEL)
        async for channel, message in merged(
            self._bus, channels, lambda: listening.set_result(None)
        ):
            try:
                if channel == PRESENCE_CHANNEL:
                    await self.record_presence(message)
                elif channel == ROLLCALL_CHANNEL:
                    await self.record_rollcall(message)
                else:
                    await self.record_viewers(message)
            except Exception:
                logger.exception("attendance could not record %s %s", channel, message)

    async def _session_known(self, session_id: int) -> bool:
        if session_id not in self._sessions:
            try:
                await self._schedule.get(session_id)
                self._sessions[session_id] = True
            except KeyError:
                return False  # not cached: it may be created later
        return True

    async def _occurrence(
        self, message: dict[str, Any], key: str = "identity"
    ) -> tuple[int, datetime, str] | None:
        room = message.get("room")
        if not isinstance(room, str) or not isinstance(message.get(key), (str, int)):
            return None
        if self._node is not None and message.get("node") != self._node:
            return None
        parsed = parse_room(room)
        if parsed is None or not await self._session_known(parsed[0]):
            return None
        return parsed[0], parsed[1], room

    async def record_presence(self, message: dict[str, Any]) -> None:
        """One ``presence`` message: a join opens an interval, a leave closes it."""
        found = await self._occurrence(message)
        if found is None:
            return
        session_id, start, room = found
        site, at = str(message["identity"]), _instant(message)
        is_open = sa.and_(
            presence_intervals.c.room == room,
            presence_intervals.c.site == site,
            presence_intervals.c.left_at.is_(None),
        )
        async with self._engine.begin() as conn:
            if message.get("here"):
                # A rejoin (duplicate identity, reconnect) keeps the interval open.
                already = await conn.execute(sa.select(presence_intervals.c.id).where(is_open))
                if already.first() is None:
                    await conn.execute(
                        sa.insert(presence_intervals).values(
                            session_id=session_id,
                            occurrence_start=start,
                            room=room,
                            site=site,
                            joined_at=at,
                        )
                    )
            else:
                await conn.execute(sa.update(presence_intervals).where(is_open).values(left_at=at))

    async def record_viewers(self, message: dict[str, Any]) -> None:
        """One ``viewers`` count of a room: keep the occurrence's peak."""
        found = await self._occurrence(message, key="households")
        if found is None:
            return
        session_id, start, room = found
        count = int(message["households"])
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(household_viewers.c.peak).where(household_viewers.c.room == room)
                )
            ).first()
            if row is None:
                await conn.execute(
                    sa.insert(household_viewers).values(
                        room=room, session_id=session_id, occurrence_start=start, peak=count
                    )
                )
            elif count > row.peak:
                await conn.execute(
                    sa.update(household_viewers)
                    .where(household_viewers.c.room == room)
                    .values(peak=count)
                )

    async def record_rollcall(self, message: dict[str, Any]) -> None:
        """One ``rollcall`` answer; the first answer of a site to a roll call counts."""
        found = await self._occurrence(message)
        status = message.get("status")
        if found is None or status not in ("present", "late"):
            return
        session_id, start, room = found
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    sa.insert(rollcall_answers).values(
                        rollcall=str(message.get("rollcall", "")),
                        site=str(message["identity"]),
                        session_id=session_id,
                        occurrence_start=start,
                        room=room,
                        status=status,
                        at=_instant(message),
                    )
                )
        except IntegrityError:
            pass


@dataclass
class SiteAttendance:
    first_join: datetime | None = None
    seconds: float = 0.0
    here: bool = False
    rollcall: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Roll call id → {"status", "at"}."""


@dataclass
class AttendanceReport:
    """The attendance of one occurrence."""

    info: SessionInfo
    expected: set[str]
    sites: dict[str, SiteAttendance]

    def to_json(self, visible: set[str] | None = None) -> dict[str, Any]:
        """As the API returns it, limited to ``visible`` sites (None: all)."""

        def shown(code: str) -> bool:
            return visible is None or code in visible

        joined = {code: a for code, a in self.sites.items() if a.first_join and shown(code)}
        expected = sorted(c for c in self.expected if shown(c))
        return {
            "session": self.info.to_json(),
            "expected": expected,
            "joined": {
                code: {
                    "first_join": local(a.first_join).isoformat() if a.first_join else None,
                    "seconds": round(a.seconds, 1),
                    "here": a.here,
                }
                for code, a in sorted(joined.items())
            },
            "absent": [c for c in expected if c not in joined],
            "rollcall": {
                code: a.rollcall
                for code, a in sorted(self.sites.items())
                if a.rollcall and shown(code)
            },
        }


async def attendance(engine: AsyncEngine, info: SessionInfo, now: datetime) -> AttendanceReport:
    """What was recorded for ``info`` (open intervals count until ``now``)."""
    async with engine.connect() as conn:
        intervals = (
            await conn.execute(
                sa.select(presence_intervals).where(presence_intervals.c.room == info.room)
            )
        ).all()
        answers = (
            await conn.execute(
                sa.select(rollcall_answers)
                .where(rollcall_answers.c.room == info.room)
                .order_by(rollcall_answers.c.at)
            )
        ).all()
    sites: dict[str, SiteAttendance] = {}
    for row in intervals:
        entry = sites.setdefault(row.site, SiteAttendance())
        if entry.first_join is None or row.joined_at < entry.first_join:
            entry.first_join = row.joined_at
        end = row.left_at or now
        entry.seconds += max(0.0, (end - row.joined_at).total_seconds())
        entry.here = entry.here or row.left_at is None
    for row in answers:
        entry = sites.setdefault(row.site, SiteAttendance())
        entry.rollcall[row.rollcall] = {"status": row.status, "at": local(row.at).isoformat()}
    return AttendanceReport(info, set(info.audience_sites), sites)
