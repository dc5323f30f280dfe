"""Sessions: scheduled activities with a theme, a host, an audience and a time window
that may repeat. Stored in UTC; Asia/Shanghai is for input and display."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.ids import RoomName
from media.library import Theme as Theme  # one concept: sessions and library items
from media.processing import Layout
from scheduler.recurrence import (
    LOCAL_ZONE,
    Occurrence,
    Recurrence,
    Repeat,
    check_bounds,
    last_end,
    local,
    occurrences,
    validate,
)
from scheduler.sites import SiteTree
from scheduler.tables import sessions as sessions_table


class AudienceKind(StrEnum):
    EVERYONE = "everyone"
    SUBTREES = "subtrees"
    """The listed sites and everything below them."""
    SITES = "sites"
    """Exactly the listed sites."""


@dataclass(frozen=True)
class Audience:
    """The sites expected at a session."""

    kind: AudienceKind
    codes: tuple[str, ...] = ()

    def sites(self, tree: SiteTree) -> set[str]:
        """The expected site codes; codes no longer in the tree are left out."""
        if self.kind is AudienceKind.EVERYONE:
            return {site.code for site in tree.all()}
        present = [code for code in self.codes if code in tree]
        if self.kind is AudienceKind.SITES:
            return set(present)
        return {member for code in present for member in tree.subtree(code)}


class SessionStatus(StrEnum):
    SCHEDULED = "scheduled"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SessionOptions:
    record: bool = False
    publish: bool = False
    """Hand the recording to the library after the session (needs ``record``)."""
    live_households: bool = False
    """Offer the session to households as live HLS."""
    restream_urls: tuple[str, ...] = ()
    """RTMP(S) destinations the room is pushed to."""
    layout: Layout = "lecturer"
    """What the library makes of the recording: the lecturer alone, or a composite of
    the lecturer beside the screen share or the stations called on stage."""


@dataclass(frozen=True)
class Session:
    """A scheduled activity. ``start``/``end`` are the first occurrence (aware UTC)."""

    id: int
    title: str
    theme: Theme
    host: str
    audience: Audience
    start: datetime
    end: datetime
    recurrence: Recurrence = field(default_factory=Recurrence)
    options: SessionOptions = field(default_factory=SessionOptions)
    status: SessionStatus = SessionStatus.SCHEDULED
    created_by: int | None = None


def room_name(session_id: int, start: datetime) -> RoomName:
    """The room of one occurrence: ``s<id>-<local yyyymmddHHMM>``."""
    return RoomName(f"s{session_id}-{local(start):%Y%m%d%H%M}")


@dataclass(frozen=True)
class SessionInfo:
    """One occurrence of a session, resolved: the snapshot handed to rooms and notices."""

    session_id: int
    room: RoomName
    title: str
    theme: Theme
    host: str
    audience_sites: frozenset[str]
    start: datetime
    end: datetime
    options: SessionOptions
    status: SessionStatus

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "room": self.room,
            "title": self.title,
            "theme": self.theme.value,
            "theme_label": self.theme.label,
            "host": self.host,
            "start": local(self.start).isoformat(),
            "end": local(self.end).isoformat(),
            "record": self.options.record,
            "publish": self.options.publish,
            "live_households": self.options.live_households,
            "status": self.status.value,
        }

    def to_message(self) -> dict[str, Any]:
        """All of it, for another node (:meth:`from_message`); not for clients (it
        holds the restream targets in full)."""
        return {
            "session_id": self.session_id,
            "room": self.room,
            "title": self.title,
            "theme": self.theme.value,
            "host": self.host,
            "audience_sites": sorted(self.audience_sites),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "options": {**asdict(self.options), "restream_urls": list(self.options.restream_urls)},
            "status": self.status.value,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> SessionInfo:
        options = dict(message["options"])
        options["restream_urls"] = tuple(options["restream_urls"])
        return cls(
            session_id=int(message["session_id"]),
            room=RoomName(message["room"]),
            title=str(message["title"]),
            theme=Theme(message["theme"]),
            host=str(message["host"]),
            audience_sites=frozenset(message["audience_sites"]),
            start=datetime.fromisoformat(message["start"]),
            end=datetime.fromisoformat(message["end"]),
            options=SessionOptions(**options),
            status=SessionStatus(message["status"]),
        )


def occurrence_info(session: Session, occurrence: Occurrence, sites: frozenset[str]) -> SessionInfo:
    """The snapshot of one occurrence of ``session``; ``sites`` is its audience, resolved."""
    return SessionInfo(
        session_id=session.id,
        room=room_name(session.id, occurrence.start),
        title=session.title,
        theme=session.theme,
        host=session.host,
        audience_sites=sites,
        start=occurrence.start,
        end=occurrence.end,
        options=session.options,
        status=session.status,
    )


def audience_sites(session: Session, tree: SiteTree) -> set[str]:
    """The site codes expected at ``session``."""
    return session.audience.sites(tree)


def _validate_session(
    tree: SiteTree, title: str, host: str, audience: Audience, options: SessionOptions
) -> None:
    if not title.strip():
        raise ValueError("title is required")
    if host not in tree:
        raise ValueError(f"unknown host site {host}")
    if audience.kind is AudienceKind.EVERYONE:
        if audience.codes:
            raise ValueError("audience everyone takes no codes")
    elif not audience.codes:
        raise ValueError(f"audience {audience.kind} needs at least one site code")
    unknown = sorted(code for code in audience.codes if code not in tree)
    if unknown:
        raise ValueError(f"unknown audience sites: {', '.join(unknown)}")
    if options.publish and not options.record:
        raise ValueError("publishing to the library needs the record option")
    bad = [u for u in options.restream_urls if not u.startswith(("rtmp://", "rtmps://"))]
    if bad:
        raise ValueError(f"restream URLs must be rtmp:// or rtmps://: {', '.join(bad)}")
    if options.layout not in get_args(Layout):
        raise ValueError(f"layout must be one of {', '.join(get_args(Layout))}")


def _from_row(row: Row[Any]) -> Session:
    return Session(
        id=row.id,
        title=row.title,
        theme=Theme(row.theme),
        host=row.host,
        audience=Audience(AudienceKind(row.audience_kind), tuple(row.audience_codes)),
        start=row.start,
        end=row.end,
        recurrence=Recurrence(
            repeat=Repeat(row.repeat),
            weekdays=frozenset(row.weekdays),
            until=row.until,
            count=row._mapping["count"],  # Row.count is the tuple method
        ),
        options=SessionOptions(
            record=row.record,
            publish=row.publish,
            live_households=row.live_households,
            restream_urls=tuple(row.restream_urls),
            layout=row.layout,
        ),
        status=SessionStatus(row.status),
        created_by=row.created_by,
    )


def _values(
    tree: SiteTree,
    title: str,
    theme: Theme,
    host: str,
    audience: Audience,
    start: datetime,
    end: datetime,
    recurrence: Recurrence,
    options: SessionOptions | None,
) -> dict[str, Any]:
    """A session's columns, checked (ValueError saying why)."""
    options = options or SessionOptions()
    validate(start, end, recurrence)
    check_bounds(start, end, recurrence)
    _validate_session(tree, title, host, audience, options)
    return {
        "title": title.strip(),
        "theme": theme.value,
        "host": host,
        "audience_kind": audience.kind.value,
        "audience_codes": list(audience.codes),
        "start": start,
        "end": end,
        "series_end": last_end(start, end, recurrence),
        "repeat": recurrence.repeat.value,
        "weekdays": sorted(recurrence.weekdays),
        "until": recurrence.until,
        "count": recurrence.count,
        "record": options.record,
        "publish": options.publish,
        "live_households": options.live_households,
        "restream_urls": list(options.restream_urls),
        "layout": options.layout,
    }


class Schedule:
    """The sessions table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self,
        tree: SiteTree,
        *,
        title: str,
        theme: Theme,
        host: str,
        audience: Audience,
        start: datetime,
        end: datetime,
        recurrence: Recurrence | None = None,
        options: SessionOptions | None = None,
        created_by: int | None = None,
    ) -> Session:
        """Add a session; ValueError when it makes no sense (checked against ``tree``)."""
        values = _values(
            tree, title, theme, host, audience, start, end, recurrence or Recurrence(), options
        )
        values |= {"status": SessionStatus.SCHEDULED.value, "created_by": created_by}
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sa.insert(sessions_table).values(values).returning(sessions_table.c.id)
            )
            new_id = result.scalar_one()
        return await self.get(new_id)

    async def update(
        self,
        session_id: int,
        tree: SiteTree,
        *,
        title: str,
        theme: Theme,
        host: str,
        audience: Audience,
        start: datetime,
        end: datetime,
        recurrence: Recurrence | None = None,
        options: SessionOptions | None = None,
    ) -> Session:
        """Replace what a session is (not its status or author); KeyError when unknown,
        ValueError as for :meth:`create`. The runner picks the change up: an open room
        whose occurrence moved away is closed, as after a restart."""
        values = _values(
            tree, title, theme, host, audience, start, end, recurrence or Recurrence(), options
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sa.update(sessions_table).where(sessions_table.c.id == session_id).values(values)
            )
            if result.rowcount == 0:
                raise KeyError(session_id)
        return await self.get(session_id)

    async def get(self, session_id: int) -> Session:
        """The session; KeyError when unknown."""
        async with self._engine.connect() as conn:
            result = await conn.execute(
                sa.select(sessions_table).where(sessions_table.c.id == session_id)
            )
            row = result.first()
        if row is None:
            raise KeyError(session_id)
        return _from_row(row)

    async def cancel(self, session_id: int) -> Session:
        """Mark a session cancelled (idempotent); KeyError when unknown."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sa.update(sessions_table)
                .where(sessions_table.c.id == session_id)
                .values(status=SessionStatus.CANCELLED.value)
            )
            if result.rowcount == 0:
                raise KeyError(session_id)
        return await self.get(session_id)

    async def overlapping(
        self, tree: SiteTree, after: datetime, before: datetime, *, cancelled: bool = False
    ) -> list[SessionInfo]:
        """Every occurrence overlapping [``after``, ``before``), by start; cancelled
        sessions only when asked for."""
        query = sa.select(sessions_table).where(
            sessions_table.c.start < before,
            sa.or_(sessions_table.c.series_end.is_(None), sessions_table.c.series_end > after),
        )
        if not cancelled:
            query = query.where(sessions_table.c.status == SessionStatus.SCHEDULED.value)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found: list[SessionInfo] = []
        for row in rows:
            session = _from_row(row)
            sites = frozenset(audience_sites(session, tree))
            found.extend(
                occurrence_info(session, occurrence, sites)
                for occurrence in occurrences(
                    session.start, session.end, session.recurrence, after, before
                )
            )
        found.sort(key=lambda info: (info.start, info.session_id))
        return found

    async def all(self) -> list[Session]:
        """Every session, newest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(sessions_table).order_by(sessions_table.c.start.desc())
            )
            return [_from_row(row) for row in rows]

    async def sessions_for_site(
        self, tree: SiteTree, code: str, day: date, days: int = 7
    ) -> list[SessionInfo]:
        """The occurrences a site hosts or is in the audience of, from the start of
        ``day`` (Asia/Shanghai) for ``days`` days: "today's and upcoming"."""
        after = datetime.combine(day, time(), LOCAL_ZONE)
        before = after + timedelta(days=days)
        return [
            info
            for info in await self.overlapping(tree, after, before)
            if info.host == code or code in info.audience_sites
        ]
