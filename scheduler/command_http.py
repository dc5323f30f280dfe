"""The command side's HTTP API and pages: attendance, escalations, the site notice
stream, dispatch, the dashboard (snapshot + live stream), statistics, one-click join,
and the pages ``/dashboard`` and ``/sessions``.

:class:`CommandCenter` owns every background task; :func:`command_router` serves it.

No ``from __future__ import annotations`` here: FastAPI must see the route-local
``AccountDep`` alias when it reads the signatures."""

import csv
import io
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.store import Bus, Store
from hub.ids import ParticipantIdentity, RoomName, valid_room_name
from hub.tokens import Grant, grant_for_role
from hub.tokens import Role as HubRole
from scheduler.accounts import Account, Auth, require
from scheduler.attendance import AttendanceRecorder, attendance, find_occurrence, parse_room
from scheduler.command import (
    Dispatch,
    EscalationConfig,
    Escalator,
    TargetKind,
    check_dispatch,
    list_escalations,
    may_follow,
    resolve_targets,
    visible_sites,
)
from scheduler.command_tables import create_tables
from scheduler.dashboard import Dashboard
from scheduler.http import RowId, check_days
from scheduler.notices import (
    KEEPALIVE_SECONDS,
    BusNotifier,
    FanoutNotifier,
    StreamOwner,
    site_notices,
    sse,
    stream_announcer,
)
from scheduler.permissions import Role, check_join_session, check_moderate, check_view_session
from scheduler.recurrence import local
from scheduler.runner import Clock, Notifier, Step, SystemClock, steps_done
from scheduler.schedule import Schedule, Session, SessionInfo
from scheduler.sites import Site, SiteKind, Sites, SiteTree
from scheduler.statistics import statistics

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
JOIN_LEAD = timedelta(minutes=10)
"""A session is joinable from the moment the runner opens its room."""
GRANT_GRACE = timedelta(minutes=15)
"""A grant for a session's room admits until the session's end plus this: lectures
overrun, and a site that dropped out near the end can still come back."""
AD_HOC_GRANT = timedelta(hours=8)
"""A grant for an ad-hoc room (no session, so no end): a working day."""
PUBLIC_DAYS = 7
"""How far ahead households see what is coming."""

STATISTICS_MAX_DAYS = 3660
"""Statistics reach back ten years at most."""

IssueToken = Callable[[Grant], str]
"""Signs a grant into a join token (the hub's ``TokenSigner.issue``)."""
EndOccurrence = Callable[[SessionInfo], Awaitable[None]]
"""Ends an occurrence now (the runner's ``end_now``)."""


def site_grant(
    room: str, site: Site, expires_at: datetime, *, now: datetime, moderate: bool | None = None
) -> Grant:
    """A site's grant for ``room`` until ``expires_at``: its role's default, or a
    moderator's when ``moderate``."""
    role = HubRole.CENTER if site.kind is SiteKind.CENTER else HubRole(site.kind.value)
    grant = grant_for_role(
        RoomName(room),
        ParticipantIdentity(site.code),
        role,
        ttl=max(1.0, (expires_at - now).total_seconds()),
        name=site.name,
        now=now.timestamp(),
    )
    return grant if moderate is None else replace(grant, can_moderate=moderate)


class CommandCenter:
    """The command side's moving parts; ``start()``/``stop()`` own every background task
    (attendance recorder, escalation check, dashboard fan-out) and end open streams."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        store: Store,
        bus: Bus,
        notifier: Notifier | None = None,
        clock: Clock | None = None,
        node: str | None = None,
        escalation: EscalationConfig | None = None,
        keepalive: float = KEEPALIVE_SECONDS,
        dashboard_refresh: float = 5.0,
    ) -> None:
        self.engine = engine
        self.store = store
        self.bus = bus
        self.clock = clock or SystemClock()
        self.node = node
        self.keepalive = keepalive
        self.notifier = FanoutNotifier(BusNotifier(bus), notifier)
        """Live notices to the sites' pages plus the configured notifier (webhooks):
        give it to the runner too, so ``session.opening`` reaches the pages."""
        self.sites = Sites(engine)
        self.schedule = Schedule(engine)
        self.dispatch = Dispatch(engine, bus)
        self.recorder = AttendanceRecorder(engine, bus, node)
        self.escalator = Escalator(engine, store, self.notifier, self.clock, escalation)
        self.dashboard = Dashboard(engine, store, bus, refresh=dashboard_refresh)
        self.streams = StreamOwner()

    async def start(self) -> None:
        await create_tables(self.engine)
        self.streams = StreamOwner()
        await self.recorder.start()
        await self.dashboard.start()
        self.escalator.start()

    async def stop(self) -> None:
        self.streams.close()
        await self.escalator.stop()
        await self.dashboard.stop()
        await self.recorder.stop()


class TargetsBody(BaseModel):
    kind: TargetKind
    codes: list[str] = Field(default_factory=list)


class DirectiveBody(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    text: str = Field(default="", max_length=10_000)
    targets: TargetsBody
    read_within_minutes: int | None = Field(default=30, ge=1, le=7 * 24 * 60)
    """A target that has not read it by then is escalated like an absent station
    (null: never)."""


def _page(name: str) -> FileResponse:
    return FileResponse(
        STATIC_DIR / name,
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def _event_stream(chunks: AsyncGenerator[bytes, None]) -> StreamingResponse:
    return StreamingResponse(
        chunks,
        media_type="text/event-stream",
        # No proxy buffering: a notice must arrive now, not when a buffer fills.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _home_site(account: Account, tree: SiteTree) -> str:
    """The site an account speaks for: its own, or the center for the administrator."""
    if account.site is not None:
        return account.site
    centers = [s.code for s in tree.all() if s.kind is SiteKind.CENTER]
    if not centers:
        raise HTTPException(409, detail="the site tree has no center")
    return centers[0]


def _dashboard_scope(account: Account, tree: SiteTree) -> set[str] | None:
    if account.role is Role.STATION_OPERATOR:
        require("the dashboard is for the center and institute operators")
    return visible_sites(account, tree)


class InviteBody(BaseModel):
    site: Annotated[str, Field(min_length=1, max_length=32)]


def _attendance_csv(report: dict[str, Any], tree: SiteTree) -> bytes:
    """One row per expected or joined site: name, when it joined, for how long, its
    roll-call answers; UTF-8 with a BOM so Excel shows the Chinese names."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    rollcalls = sorted({rc for answers in report["rollcall"].values() for rc in answers})
    writer.writerow(["site", "name", "expected", "first_join", "minutes", "here", *rollcalls])
    codes = sorted(set(report["expected"]) | set(report["joined"]))
    for code in codes:
        joined = report["joined"].get(code)
        answers = report["rollcall"].get(code, {})
        writer.writerow(
            [
                code,
                tree.get(code).name if code in tree else code,
                "yes" if code in report["expected"] else "no",
                joined["first_join"] if joined else "",
                round(joined["seconds"] / 60, 1) if joined else 0,
                "yes" if joined and joined["here"] else "no",
                *(answers.get(rc, {}).get("status", "absent") for rc in rollcalls),
            ]
        )
    return out.getvalue().encode("utf-8-sig")


def command_router(
    *,
    auth: Auth,
    center: CommandCenter,
    issue_token: IssueToken,
    end_occurrence: EndOccurrence | None = None,
) -> APIRouter:
    """The routes: ``/dashboard``, ``/sessions``, ``/attendance`` and under ``/api``.
    ``end_occurrence`` backs ``POST /api/sessions/{id}/end`` (absent: 501)."""
    router = APIRouter(tags=["command"])
    AccountDep = Annotated[Account, Depends(auth.current_account)]
    engine, dispatch, dashboard = center.engine, center.dispatch, center.dashboard

    @router.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> FileResponse:
        return _page("dashboard.html")

    @router.get("/sessions", include_in_schema=False)
    async def sessions_page() -> FileResponse:
        return _page("sessions.html")

    @router.get("/attendance", include_in_schema=False)
    async def attendance_page() -> FileResponse:
        return _page("attendance.html")

    # --- joining, moderating and ending a session's occurrence ---

    async def open_occurrence(session_id: int) -> tuple[Session, SiteTree, SessionInfo]:
        """The session and its occurrence open now (409 when none is, or it ended)."""
        try:
            session = await center.schedule.get(session_id)
        except KeyError:
            raise HTTPException(404, detail=f"no session {session_id}") from None
        tree = await center.sites.tree()
        now = center.clock.now()
        live = [
            info
            for info in await center.schedule.overlapping(tree, now, now + JOIN_LEAD)
            if info.session_id == session_id
        ]
        if not live:
            raise HTTPException(409, detail="this session is not open now")
        if Step.CLOSE in await steps_done(engine, live[0]):
            raise HTTPException(409, detail="this session has ended")
        return session, tree, live[0]

    def session_grant(
        account: Account, tree: SiteTree, info: SessionInfo, moderate: bool | None
    ) -> dict[str, str]:
        site = tree.get(_home_site(account, tree))
        now = center.clock.now()
        grant = site_grant(info.room, site, info.end + GRANT_GRACE, now=now, moderate=moderate)
        return {"room": info.room, "token": issue_token(grant)}

    @router.post("/api/sessions/{session_id}/join")
    async def join(account: AccountDep, session_id: RowId) -> dict[str, str]:
        """The caller's site's join token for the occurrence open now, valid until its
        end plus :data:`GRANT_GRACE`. The token travels in this body only: the page
        keeps it out of every URL (``url`` names the room, not the token)."""
        session, tree, info = await open_occurrence(session_id)
        require(check_join_session(account.actor, tree, session.host, session.audience))
        return {**session_grant(account, tree, info, None), "url": f"/station?room={info.room}"}

    @router.post("/api/sessions/{session_id}/console")
    async def console(account: AccountDep, session_id: RowId) -> dict[str, str]:
        """A moderator's token for the occurrence open now: the center, or the institute
        operator whose subtree hosts it (station operators never)."""
        session, tree, info = await open_occurrence(session_id)
        require(check_moderate(account.actor, tree, session.host, session.audience))
        return {**session_grant(account, tree, info, True), "url": f"/console?room={info.room}"}

    @router.post("/api/sessions/{session_id}/end")
    async def end(account: AccountDep, session_id: RowId) -> dict[str, Any]:
        """End the occurrence open now before its time (its moderators): recording
        stops and goes to the library, the room closes, nobody can join it again."""
        session, tree, info = await open_occurrence(session_id)
        require(check_moderate(account.actor, tree, session.host, session.audience))
        if end_occurrence is None:
            raise HTTPException(501, detail="this hub cannot end sessions")
        await end_occurrence(info)
        return {"room": info.room, "ended": True}

    @router.get("/api/sessions/{session_id}/occurrences")
    async def session_occurrences(account: AccountDep, session_id: RowId) -> list[dict[str, Any]]:
        """The session's occurrences from 62 days ago to 14 days ahead, each with its
        room and whether it has ended: where its attendance is found."""
        try:
            session = await center.schedule.get(session_id)
        except KeyError:
            raise HTTPException(404, detail=f"no session {session_id}") from None
        tree = await center.sites.tree()
        require(check_view_session(account.actor, tree, session.host, session.audience))
        now = center.clock.now()
        window = await center.schedule.overlapping(
            tree, now - timedelta(days=62), now + timedelta(days=14), cancelled=True
        )
        found = [info for info in window if info.session_id == session_id]
        return [
            {
                **info.to_json(),
                "ended": info.end <= now or Step.CLOSE in await steps_done(engine, info),
            }
            for info in found
        ]

    # --- ad-hoc rooms: the center's own meetings, no session ---

    def ad_hoc(account: Account, room: str) -> str:
        if account.role is not Role.CENTER_ADMIN:
            require("only the center opens ad-hoc rooms")
        try:
            valid_room_name(room)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        if parse_room(room) is not None:
            require("this name is a scheduled session's room: open it from the session")
        return room

    @router.post("/api/rooms/{room}/console")
    async def ad_hoc_console(account: AccountDep, room: str) -> dict[str, str]:
        """A moderator's token for an ad-hoc room, valid :data:`AD_HOC_GRANT`."""
        ad_hoc(account, room)
        tree = await center.sites.tree()
        now = center.clock.now()
        site = tree.get(_home_site(account, tree))
        grant = site_grant(room, site, now + AD_HOC_GRANT, now=now, moderate=True)
        return {"room": room, "token": issue_token(grant), "url": f"/console?room={room}"}

    @router.post("/api/rooms/{room}/invite")
    async def invite(account: AccountDep, room: str, body: InviteBody) -> dict[str, str]:
        """A site's link into an ad-hoc room, to hand out: the token rides in the link's
        fragment, which browsers never send to a server."""
        ad_hoc(account, room)
        tree = await center.sites.tree()
        if body.site not in tree:
            raise HTTPException(404, detail=f"no site {body.site}")
        now = center.clock.now()
        grant = site_grant(room, tree.get(body.site), now + AD_HOC_GRANT, now=now)
        return {"room": room, "site": body.site, "url": f"/station#token={issue_token(grant)}"}

    # --- attendance ---

    async def occurrence_report(account: Account, room: str) -> tuple[dict[str, Any], SiteTree]:
        tree = await center.sites.tree()
        info = await find_occurrence(center.schedule, tree, room)
        if info is None:
            raise HTTPException(404, detail=f"no session occurrence has the room {room}")
        session = await center.schedule.get(info.session_id)
        require(check_view_session(account.actor, tree, session.host, session.audience))
        report = await attendance(engine, info, center.clock.now())
        return report.to_json(visible_sites(account, tree)), tree

    @router.get("/api/attendance/{room}.csv")
    async def room_attendance_csv(account: AccountDep, room: str) -> Response:
        report, tree = await occurrence_report(account, room)
        return Response(
            _attendance_csv(report, tree),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="attendance-{room}.csv"'},
        )

    @router.get("/api/attendance/{room}")
    async def room_attendance(account: AccountDep, room: str) -> dict[str, Any]:
        """Expected, joined (first join, seconds), absent and roll-call answers."""
        report, tree = await occurrence_report(account, room)
        names = {code: tree.get(code).name for code in report["expected"] if code in tree}
        names |= {code: tree.get(code).name for code in report["joined"] if code in tree}
        return {**report, "names": names}

    # --- households: what is live and what is coming ---

    @router.get("/api/public/sessions")
    async def public_sessions() -> dict[str, list[dict[str, Any]]]:
        """Anyone: the sessions live for households now and in the coming days, with
        only what a household needs (title, theme, time, host's name, room)."""
        tree = await center.sites.tree()
        now = center.clock.now()
        window = await center.schedule.overlapping(tree, now, now + timedelta(days=PUBLIC_DAYS))
        live: list[dict[str, Any]] = []
        upcoming: list[dict[str, Any]] = []
        for info in window:
            if not info.options.live_households:
                continue
            entry = {
                "room": info.room,
                "title": info.title,
                "theme": info.theme.value,
                "theme_label": info.theme.label,
                "host_name": tree.get(info.host).name if info.host in tree else "",
                "start": local(info.start).isoformat(),
                "end": local(info.end).isoformat(),
            }
            if info.start > now:
                upcoming.append(entry)
            elif Step.CLOSE not in await steps_done(engine, info):
                live.append(entry)
        return {"live": live, "upcoming": upcoming[:20]}

    @router.get("/api/escalations")
    async def escalations(account: AccountDep, days: int = 1) -> list[dict[str, Any]]:
        """Expected stations that were missing, in the caller's subtree, newest first."""
        check_days(days, 62)
        tree = await center.sites.tree()
        since = center.clock.now() - timedelta(days=days)
        return await list_escalations(engine, tree, visible_sites(account, tree), since)

    # --- notices ---

    @router.get("/api/notices/stream")
    async def notices(account: AccountDep) -> StreamingResponse:
        """Server-Sent Events of the caller's site channel."""
        tree = await center.sites.tree()
        code = _home_site(account, tree)
        announce = stream_announcer(center.bus, center.node, code)
        chunks = site_notices(center.bus, code, announce)
        return _event_stream(center.streams.relay(chunks, center.keepalive))

    # --- dispatch ---

    @router.post("/api/directives", status_code=201)
    async def send_directive(account: AccountDep, body: DirectiveBody) -> dict[str, Any]:
        tree = await center.sites.tree()
        try:
            targets = resolve_targets(tree, body.targets.kind, body.targets.codes)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        targets.discard(_home_site(account, tree))
        require(check_dispatch(account, tree, targets))
        try:
            read_within = (
                None
                if body.read_within_minutes is None
                else timedelta(minutes=body.read_within_minutes)
            )
            directive = await dispatch.send(account, body.title, body.text, targets, read_within)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        return directive.to_json()

    @router.get("/api/directives")
    async def list_directives(account: AccountDep) -> list[dict[str, Any]]:
        """Directives sent within the caller's reach or addressed to its site."""
        tree = await center.sites.tree()
        visible = visible_sites(account, tree)
        return [d.to_json(visible) for d in await dispatch.recent() if may_follow(account, tree, d)]

    @router.get("/api/directives/{directive_id}")
    async def get_directive(account: AccountDep, directive_id: RowId) -> dict[str, Any]:
        tree = await center.sites.tree()
        try:
            directive = await dispatch.get(directive_id)
        except KeyError:
            raise HTTPException(404, detail=f"no directive {directive_id}") from None
        if not may_follow(account, tree, directive):
            require("this directive is neither yours nor addressed to your site")
        return directive.to_json(visible_sites(account, tree))

    @router.post("/api/directives/{directive_id}/ack")
    async def acknowledge(account: AccountDep, directive_id: RowId) -> dict[str, str]:
        tree = await center.sites.tree()
        code = _home_site(account, tree)
        try:
            read_at = await dispatch.acknowledge(directive_id, code)
        except KeyError:
            raise HTTPException(
                404, detail=f"directive {directive_id} is not addressed to {code}"
            ) from None
        return {"site": code, "read_at": read_at.isoformat()}

    # --- dashboard and statistics ---

    @router.get("/api/dashboard")
    async def dashboard_snapshot(account: AccountDep) -> dict[str, Any]:
        tree = await center.sites.tree()
        return dashboard.snapshot(_dashboard_scope(account, tree))

    @router.get("/api/dashboard/stream")
    async def dashboard_stream(account: AccountDep) -> StreamingResponse:
        """A snapshot, then batched ``sites`` changes and directive read receipts."""
        tree = await center.sites.tree()
        visible = _dashboard_scope(account, tree)

        async def chunks() -> AsyncGenerator[bytes, None]:
            async with dashboard.listen(visible) as listener:
                yield sse("snapshot", dashboard.snapshot(visible))
                while True:
                    message = await listener.queue.get()
                    yield sse(str(message["type"]), message)

        return _event_stream(center.streams.relay(chunks(), center.keepalive))

    @router.get("/api/statistics")
    async def statistics_json(account: AccountDep, days: int = 365) -> dict[str, Any]:
        check_days(days, STATISTICS_MAX_DAYS)
        tree = await center.sites.tree()
        visible = _dashboard_scope(account, tree)
        stats = await statistics(engine, tree, center.clock.now(), days, visible)
        return stats.to_json(tree)

    @router.get("/api/statistics.csv")
    async def statistics_csv(account: AccountDep, days: int = 365) -> Response:
        check_days(days, STATISTICS_MAX_DAYS)
        tree = await center.sites.tree()
        visible = _dashboard_scope(account, tree)
        stats = await statistics(engine, tree, center.clock.now(), days, visible)
        return Response(
            stats.to_csv(tree),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="statistics.csv"'},
        )

    return router
